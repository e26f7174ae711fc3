"""train.report_to: TensorBoard by default, Weights & Biases and MLflow through accelerate's
tracker API, each run here in its offline mode (nothing leaves the machine)."""

import json

import pytest

from vlmr1.config import ConfigError, load_config
from vlmr1.rl.trainer import train

SHORT = ["train.steps=2", "train.prompts_per_step=2", "rollout.group_size=2", "train.micro_batch_size=4",
         "rollout.max_completion_length=4", "data.num_train=8", "data.num_eval=0", "train.progress=false",
         "train.log_completions=0"]


def run(tmp_path, *overrides):
    cfg = load_config(None, [*SHORT, f"train.output_dir={tmp_path / 'run'}", *overrides])
    train(cfg)
    return tmp_path / "run"


def logged_losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_mlflow_gets_every_step_of_the_metrics_log(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())  # a local store, no server
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = run(tmp_path, "train.report_to=[tensorboard, mlflow]")
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    (experiment,) = [e for e in client.search_experiments() if e.name == "vlmr1"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == out.name and mlrun.info.status == "FINISHED"
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(logged_losses(out))  # the same numbers as metrics.jsonl
    assert mlrun.data.params["algo.beta"] == "0.04"  # the resolved config as parameters
    assert (out / "tensorboard").is_dir()


def test_wandb_offline_run_gets_every_step_of_the_metrics_log(tmp_path, monkeypatch):
    # A real offline run (its record in RUN/wandb/offline-run-*/, for `wandb sync` later); what
    # reaches it is read at wandb's own Run.log, since the record is a binary file of wandb's.
    import wandb.sdk.wandb_run as wandb_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    real_log = wandb_run.Run.log

    def spy(self, data, step=None, **kwargs):
        logged.append((step, dict(data)))
        return real_log(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb_run.Run, "log", spy)
    out = run(tmp_path, "train.report_to=[wandb]")
    (offline,) = list((out / "wandb").glob("offline-run-*"))
    (record,) = list(offline.glob("*.wandb"))
    assert record.stat().st_size > 0
    assert [step for step, _ in logged] == [1, 2]
    assert [data["loss"] for _, data in logged] == pytest.approx(logged_losses(out))
    assert not (out / "tensorboard").exists()  # report_to names the trackers: tensorboard was not asked for


def test_none_writes_only_the_metrics_log(tmp_path):
    out = run(tmp_path, "train.report_to=[none]")
    assert (out / "metrics.jsonl").exists() and not (out / "tensorboard").exists()


@pytest.mark.parametrize(
    "value,message",
    [("[tensorbord]", "unknown tracker 'tensorbord'"), ("[none, wandb]", "'none' cannot be combined")],
)
def test_bad_report_to_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [f"train.report_to={value}"])


def test_trackers_finish_without_ending_the_process_group(tmp_path, monkeypatch):
    # accelerator.end_training() also destroys the process group, which a second run in the same
    # processes (vlmr1 compare runs several) still needs: closing the log only finishes the trackers.
    from accelerate import Accelerator

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    ended = []
    monkeypatch.setattr(Accelerator, "end_training", lambda self: ended.append(True))
    run(tmp_path, "train.report_to=[mlflow]")
    assert ended == []
    import mlflow

    assert mlflow.active_run() is None  # the tracker's run was finished all the same
