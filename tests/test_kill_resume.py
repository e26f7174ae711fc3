"""Runs that survive SIGKILL: a real ``vlmr1 train`` process killed mid-run and restarted with
``train.resume=auto`` ends with the same weights as an uninterrupted run, and a kill at any point
of a checkpoint write or delete leaves a complete, loadable checkpoint behind.

The kills are made deterministic rather than timed: the training run's reward function, and the
checkpoint writer in a child process, stop at a chosen point, say so by touching a flag file,
and sleep until the test kills them. Nothing is mocked in the parent: it sees only the files.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmr1.config import ConfigError, load_config
from vlmr1.rl.trainer import train
from vlmr1.checkpoints import STATE_FILE, complete_checkpoints, latest_checkpoint, resolve_resume, save_checkpoint

STEPS = 6

# The length reward of tests/test_trainer.py, with a hold: when HOLD_AT_CALL is set, its N-th call
# (the reward stage of step N: one call per step, no evaluation) touches HELD_FLAG and sleeps until
# killed. Rewards are computed before anything of that step is logged or saved, so the kill lands
# after step N-1 is fully done. The hold changes no value, only when the process stops.
REWARD = '''
import os, time
from pathlib import Path

calls = 0


def length_reward(completions, **kw):
    global calls
    calls += 1
    if calls == int(os.environ.get("HOLD_AT_CALL", "0")):
        Path(os.environ["HELD_FLAG"]).touch()
        time.sleep(600)
    return [float(len(c)) for c in completions]
'''

# Calls save_checkpoint(out, step, ..., keep_last) with a stand-in adapter (one tensor holding the
# step) and stalls at STALL until killed: "write" (weights cut short), "rename" (complete, not yet
# renamed), "delete" (a checkpoint half deleted: weights gone, the rest still there).
CHILD = '''
import os, shutil, sys, time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlmr1.checkpoints import save_checkpoint

out, step, keep_last, stall = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def hold():
    (out.parent / "stalled").touch()
    time.sleep(600)


class Adapter:
    def save(self, folder):
        save_file({"w": torch.full((2,), float(step))}, folder / "model.safetensors")
        if stall == "write":
            weights = folder / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:40])  # cut short, as a kill mid-write leaves it
            hold()


real_replace, real_rmtree = os.replace, shutil.rmtree


def replace(src, dst):
    if stall == "rename" and Path(src).name.startswith(".tmp-checkpoint"):
        hold()
    return real_replace(src, dst)


def rmtree(path, *args, **kwargs):
    weights = Path(path) / "model.safetensors"
    if stall == "delete" and weights.exists():
        weights.unlink()
        hold()
    return real_rmtree(path, *args, **kwargs)


os.replace, shutil.rmtree = replace, rmtree
p = torch.nn.Parameter(torch.zeros(2))
optimizer = torch.optim.AdamW([p])
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
save_checkpoint(out, step, Adapter(), optimizer, scheduler, keep_last=keep_last)
'''

ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "r.py"
    path.write_text(REWARD)
    return path


def overrides(tiny_dir, reward_file, out, *extra):
    """2 prompts x 4 completions of <= 8 tokens, 6 steps, a checkpoint every step."""
    return [
        f"model.path={tiny_dir}",
        "data.num_train=16",
        "data.num_eval=0",
        "train.prompts_per_step=2",
        "rollout.group_size=4",
        "rollout.max_completion_length=8",
        "train.micro_batch_size=4",
        f"train.steps={STEPS}",
        "train.save_every=1",
        "train.lr=1e-3",
        "train.progress=false",
        f"train.output_dir={out}",
        f"reward.funcs=[{reward_file}:length_reward]",
        "reward.weights=null",
        "train.log_completions=1",  # rollouts.jsonl: every step
        *extra,
    ]


@pytest.fixture
def spawned():
    """Processes a test started; any still running when it ends (a failed assertion) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def start_train(spawned, args, log: Path, **env) -> subprocess.Popen:
    # Output to a file, not a pipe: a full pipe would block the child while the test polls.
    with log.open("ab") as f:
        cmd = [sys.executable, "-m", "vlmr1.cli", "train", *args]
        spawned.append(subprocess.Popen(cmd, env={**ENV, **env}, stdout=f, stderr=subprocess.STDOUT))
    return spawned[-1]


def wait_for(path: Path, proc: subprocess.Popen, log: Path | None = None, timeout: float = 180) -> None:
    """Poll until ``path`` exists; fail at once if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"no {path.name} (process exit status {proc.poll()}, waited up to {timeout} s)\n{tail}")
        time.sleep(0.05)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]


def train_steps(out: Path) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r]


def rollout_steps(out: Path) -> list[int]:
    """Steps of rollouts.jsonl, once per step (every line must parse); 8 lines (2 groups x 4) each."""
    steps = [json.loads(line)["step"] for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert all(steps.count(s) == 8 for s in steps)
    return sorted(set(steps))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


@pytest.fixture(scope="module")
def reference(tiny_dir, reward_file, tmp_path_factory):
    """The uninterrupted 6-step run: a subprocess with the killed run's command line except the
    output folder (resume=auto too, which finds nothing to resume in a fresh folder)."""
    out = tmp_path_factory.mktemp("straight")
    log = out.parent / f"{out.name}.log"
    with log.open("wb") as f:
        cmd = [sys.executable, "-m", "vlmr1.cli", "train", *overrides(tiny_dir, reward_file, out, "train.resume=auto")]
        proc = subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
    finish(proc, log)
    return out


def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(reference, tiny_dir, reward_file, tmp_path, spawned):
    out, log, held = tmp_path / "run", tmp_path / "train.log", tmp_path / "held"
    args = overrides(tiny_dir, reward_file, out, "train.resume=auto")
    # Hold in step 4's reward stage: checkpoint-3 is complete, step 4 has started.
    proc = start_train(spawned, args, log, HOLD_AT_CALL="4", HELD_FLAG=str(held))
    wait_for(held, proc, log)
    assert latest_checkpoint(out) == out / "checkpoint-3"
    kill(proc)
    assert not (out / "final").exists() and train_steps(out) == [1, 2, 3]
    before = (out / "metrics.jsonl").read_text()
    assert rollout_steps(out) == [1, 2, 3]
    # What a kill between a step's rollout lines and its checkpoint, or in the middle of a write,
    # would leave: lines of a step after the checkpoint, and a line cut short.
    step3 = [line for line in (out / "rollouts.jsonl").read_text().splitlines(keepends=True) if line.startswith('{"step": 3,')]
    with (out / "rollouts.jsonl").open("a") as f:
        f.write("".join(line.replace('"step": 3,', '"step": 4,', 1) for line in step3) + '{"step": 4, "gro')
    ckpt1_written = (out / "checkpoint-1" / STATE_FILE).stat().st_mtime_ns

    finish(start_train(spawned, args, log), log)  # same command, no hold: resumes from checkpoint-3
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]  # one row per step, none twice
    assert rollout_steps(out) == [1, 2, 3, 4, 5, 6]  # one set of rollout lines per step, none cut short
    # The same lines as the uninterrupted run's, but for the image paths, which name each run's folder.
    assert (out / "rollouts.jsonl").read_text().replace(str(out), "RUN") == (reference / "rollouts.jsonl").read_text().replace(str(reference), "RUN")
    # Resumed, not started over: the killed run's rows (with their own stage timings) and
    # checkpoints are kept as they were, not rewritten.
    assert (out / "metrics.jsonl").read_text().startswith(before)
    assert (out / "checkpoint-1" / STATE_FILE).stat().st_mtime_ns == ckpt1_written
    assert [p.name for p in complete_checkpoints(out)] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    assert not list(out.glob(".tmp-*"))
    # Bitwise: the same batches and samples (seeded per step), float32 weights and AdamW state
    # restored exactly, one thread on the same machine, so every operation repeats exactly.
    assert_same_weights(out / "final", reference / "final")
    # ... and the comparison can fail: the weights moved after the checkpoint the run resumed from.
    w3, w6 = load_file(reference / "checkpoint-3" / "model.safetensors"), load_file(reference / "final" / "model.safetensors")
    assert any(not torch.equal(w3[k], w6[k]) for k in w3)


def kill_child_at(spawned, out: Path, step: int, keep_last: int, stall: str) -> None:
    """Run CHILD in ``out``'s parent folder and SIGKILL it where it stalls."""
    script = out.parent / "child.py"
    script.write_text(CHILD)
    log = out.parent / "child.log"
    with log.open("wb") as f:
        cmd = [sys.executable, str(script), str(out), str(step), str(keep_last), stall]
        spawned.append(subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT))
    wait_for(out.parent / "stalled", spawned[-1], log, timeout=120)
    kill(spawned[-1])


def test_kill_during_a_checkpoint_write_resumes_from_the_previous_one(reference, tiny_dir, reward_file, tmp_path, spawned):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(reference / "checkpoint-1", out / "checkpoint-1")  # written by the trainer's save_checkpoint
    # What a run killed while writing checkpoint-2 leaves in its log: the loop logs a step, then saves it.
    logged = (reference / "metrics.jsonl").read_text().splitlines(keepends=True)[:2]
    assert [json.loads(line)["step"] for line in logged] == [1, 2]
    (out / "metrics.jsonl").write_text("".join(logged))
    kill_child_at(spawned, out, step=2, keep_last=0, stall="write")
    assert (out / ".tmp-checkpoint-2" / "model.safetensors").stat().st_size == 40  # the cut-short weights
    assert not (out / ".tmp-checkpoint-2" / STATE_FILE).exists() and not (out / "checkpoint-2").exists()
    # A folder renamed by hand before its write finished: weights there, no trainer_state.json.
    (out / "checkpoint-5").mkdir()
    shutil.copy(reference / "checkpoint-5" / "model.safetensors", out / "checkpoint-5")

    assert latest_checkpoint(out) == out / "checkpoint-1"
    cfg = load_config(None, overrides(tiny_dir, reward_file, out, "train.resume=auto"))
    assert resolve_resume(cfg, out) == out / "checkpoint-1"
    cfg.train.resume = str(out / "checkpoint-5")
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resolve_resume(cfg, out)

    # In-process this time: the reference ran as a subprocess, so this also checks that both agree.
    train(load_config(None, overrides(tiny_dir, reward_file, out, "train.resume=auto")))
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]  # the killed run's step 2 dropped, then redone
    assert (out / "metrics.jsonl").read_text().startswith(logged[0])  # resumed from step 1: its row kept
    assert [p.name for p in complete_checkpoints(out)] == [f"checkpoint-{k}" for k in range(1, STEPS + 1)]
    assert not list(out.glob(".tmp-*"))  # the stale write was redone in place by the step-2 save
    assert_same_weights(out / "checkpoint-5", reference / "checkpoint-5")  # the broken folder was replaced
    assert_same_weights(out / "final", reference / "final")


class Stub:
    """Stands in for a model adapter: ``save`` writes one tensor holding the step."""

    def __init__(self, step: int):
        self.step = step

    def save(self, folder: Path) -> None:
        save_file({"w": torch.full((2,), float(self.step))}, folder / "model.safetensors")


def saved_step(ckpt: Path) -> float:
    return load_file(ckpt / "model.safetensors")["w"][0].item()


def stub_save(out: Path, step: int, keep_last: int) -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([p])
    save_checkpoint(out, step, Stub(step), optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), keep_last=keep_last)


@pytest.mark.parametrize(
    "step, stall, latest",
    [
        (3, "write", 2),  # new weights half written: the old checkpoint is still there
        (3, "rename", 2),  # new one complete but not yet renamed: old one not deleted yet
        (3, "delete", 3),  # new one in place, the old one half deleted: the new one counts
        # The same step saved again (the end of a run re-saves the loop's last checkpoint): the
        # checkpoint being replaced must not stay "complete" while half deleted.
        (2, "delete", 2),
    ],
    ids=["write", "rename", "delete-old", "resave-delete"],
)
def test_keep_last_1_leaves_a_complete_checkpoint_at_any_kill(tmp_path, spawned, step, stall, latest):
    out = tmp_path / "run"
    out.mkdir()
    stub_save(out, 1, keep_last=1)
    stub_save(out, 2, keep_last=1)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2"]  # keep_last=1 removed checkpoint-1
    kill_child_at(spawned, out, step=step, keep_last=1, stall=stall)
    ckpt = latest_checkpoint(out)
    assert ckpt == out / f"checkpoint-{latest}"
    assert json.loads((ckpt / STATE_FILE).read_text())["step"] == latest
    assert saved_step(ckpt) == latest  # loadable: cut-short or deleted weights would not load
    assert torch.load(ckpt / "optimizer.pt", weights_only=True).keys() == {"optimizer", "scheduler", "rng"}
