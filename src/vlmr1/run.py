"""What a training run starts and ends with: its folder and saved config, seeding, GPU
out-of-memory advice, and the finish (final checkpoint and model, held-out evaluation, summary).
Shared by ``vlmr1 train`` (GRPO) and ``vlmr1 sft``."""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from .checkpoints import latest_checkpoint, save_checkpoint, write_json
from accelerate import Accelerator

from .config import Config, dump, to_dict
from .evaluate import flat_metrics, print_table, run_evals
from .metrics import MetricsLogger, accelerate_trackers, flat_config


def make_run_dir(cfg: Config, kind: str) -> Path:
    if cfg.train.output_dir is None:
        cfg.train.output_dir = str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_config(cfg: Config, out: Path) -> None:
    """Save the resolved config in the run folder and print it, so every run states its settings."""
    dump(cfg, out / "config.yaml")
    print((out / "config.yaml").read_text())


def make_accelerator(cfg: Config, out: Path) -> Accelerator:
    """The run's Accelerator on whatever accelerator torch has (CUDA, NPU, XPU, MPS...), else the
    CPU, with the accelerate trackers ``train.report_to`` names."""
    return Accelerator(cpu=not has_accelerator(), log_with=accelerate_trackers(cfg.train.report_to) or None, project_dir=str(out))


def has_accelerator() -> bool:
    """Whether torch sees an accelerator of any kind. accelerate needs ``cpu=True`` where there is
    none to run several CPU processes as one gloo group, and ``cpu=False`` to use one that is
    there: ``cpu=not torch.cuda.is_available()`` put NPU, XPU and MPS machines on the CPU."""
    return torch.accelerator.is_available()


def start_log(cfg: Config, out: Path, accelerator: Accelerator, start: int, model, adapter, data) -> tuple[MetricsLogger, dict]:
    """Rank 0 saves and prints the config and starts the trackers; every rank gets the metrics
    log, cut back to the step resumed from, and the run summary. A fresh run first evaluates
    the held-out splits ("before")."""
    main = accelerator.is_main_process
    if main:
        save_config(cfg, out)
    trackers = accelerate_trackers(cfg.train.report_to)
    if trackers:
        name = Path(out).name
        accelerator.init_trackers("vlmr1", config=flat_config(to_dict(cfg)),
                                  init_kwargs={"wandb": {"name": name, "dir": str(out)}, "mlflow": {"run_name": name}})
    tensorboard = "tensorboard" in cfg.train.report_to
    logger = MetricsLogger(out, enabled=main, tensorboard=tensorboard, accelerator=accelerator if trackers else None)
    logger.truncate_after(start)
    summary: dict = {"skipped_rows": data.skipped} if data.skipped else {}
    if cfg.train.eval_before and start == 0 and main and data.evals:
        summary["before"] = run_evals(cfg, model, adapter, data, out, "before")
        logger.log(0, flat_metrics(summary["before"]))
    return logger, summary


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def explain_oom(settings: list[str]):
    """Turn a GPU out-of-memory error into one that names the settings that reduce memory."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"GPU out of memory ({str(e).splitlines()[0] if str(e) else 'no details'}). Lower one of: "
            + ", ".join(settings)
        ) from e


def finish_run(
    cfg: Config, out: Path, adapter, model, optimizer, scheduler, data, logger: MetricsLogger, summary: dict, state: dict
) -> None:
    """Rank 0 at the end of SFT or GRPO: final checkpoint and model, held-out evaluation, summary.

    ``state`` goes into the final checkpoint's trainer state (e.g. the skipped-step count).
    """
    # The loop has already saved the last step when save_every divides it: saving it again would
    # only open a window in which that checkpoint is being replaced.
    if latest_checkpoint(out) != out / f"checkpoint-{cfg.train.steps}":
        save_checkpoint(out, cfg.train.steps, adapter, optimizer, scheduler, state, keep_last=cfg.train.keep_last)
    adapter.save(out / "final")
    if cfg.train.eval_after and data.evals:
        summary["after"] = run_evals(cfg, model, adapter, data, out, "after")
        logger.log(cfg.train.steps, flat_metrics(summary["after"], "eval_after"))
    write_json(out / "summary.json", summary)
    print_table(summary)
