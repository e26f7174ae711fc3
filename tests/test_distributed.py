"""Data parallelism is exact: two gloo processes with half the batch each reproduce one
process with the whole batch (same logged loss and reward, same updated weights)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("dist_worker.py")
G = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(tiny_dir, reward_file, out, prompts_per_rank, extra=()):
    return [
        f"model.path={tiny_dir}",
        "data.num_train=16",
        "data.num_eval=0",
        f"train.prompts_per_step={prompts_per_rank}",
        f"rollout.group_size={G}",
        "rollout.max_completion_length=6",
        "train.micro_batch_size=4",
        "train.steps=2",
        "train.lr=1e-3",
        "train.progress=false",
        f"train.output_dir={out}",
        f"reward.funcs=[{reward_file}:length_reward]",
        "reward.weights=null",
        *extra,
    ]


def _launch(world: int, overrides: list[str]) -> None:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
        )
        cmd = [sys.executable, str(WORKER), str(G), json.dumps(overrides)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for rank, p in enumerate(procs):
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"rank {rank} of {world} failed:\n{out[-3000:]}"


def _train_rows(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "r.py"
    path.write_text("def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    return path


@pytest.mark.parametrize(
    "extra",
    [
        [],  # grpo aggregation (per-sequence mean), beta 0.04 with the reference model
        ["algo.loss_aggregation=dapo", "algo.beta=0.0"],  # global token mean, no reference
    ],
    ids=["grpo", "dapo"],
)
def test_two_processes_equal_one_process_with_the_whole_batch(tiny_dir, reward_file, tmp_path, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    _launch(1, _overrides(tiny_dir, reward_file, one, 4, extra))  # 4 prompts x G on one rank
    _launch(2, _overrides(tiny_dir, reward_file, two, 2, extra))  # the same 4 prompts, 2 per rank

    rows_one, rows_two = _train_rows(one), _train_rows(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2]
    for a, b in zip(rows_one, rows_two):
        # Same completions, so the same global reward statistics (each rank alone would log the
        # mean of its own 2 prompts, not of all 4); the loss agrees to fp32 rounding.
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["reward_std"] == pytest.approx(b["reward_std"], abs=1e-5)
        assert a["completion_length"] == b["completion_length"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)  # ~8 fp32 ulps at loss ~2.5
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    w1, w2 = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    start = load_file(tiny_dir / "model.safetensors")
    moved = max((w1[k] - start[k]).abs().max().item() for k in w1)
    assert moved > 1e-4  # the runs really trained (lr 1e-3, two AdamW steps)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    # Gradients agree to fp32 summation order (grad_norm to 1e-5 relative above). AdamW divides
    # each gradient by its own running RMS, so for parameters whose gradient is tiny that rounding
    # noise is not scaled down with it: allow 1% of one step (lr = 1e-3), not more. A real bug
    # (a rank's share weighted wrongly, groups split across ranks) moves weights by ~lr.
    assert diff <= 1e-5, f"weights differ by {diff:.2e} after two steps"
