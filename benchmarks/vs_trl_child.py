"""One benchmark run in its own process: vlmr1's GRPO or TRL's, timed per optimizer step.

    python benchmarks/vs_trl_child.py SPEC.json RESULT.json

Started by ``benchmarks/vs_trl.py``, one process per run, so that peak memory is per trainer.
SPEC holds the workload and the matched settings (one dict, read by both trainers' setups);
RESULT gets one row per optimizer step plus the memory figures.

Memory: the process's peak RSS (VmHWM) is read twice. Just before the training loop it is
recorded (imports, models, data) and then reset (``/proc/self/clear_refs``, value 5), so the
high-water mark read at the end of the last step is the peak of the training loop alone.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

MIB = 1024.0


def _status_kib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"/proc/self/status: no {field} line")


class LoopProbe:
    """RSS figures of this process in MiB (before the loop, the loop's peak) and the loop's torch threads."""

    def __init__(self):
        self.setup_peak = self.loop_start = self.loop_peak = 0.0
        self.threads = 0

    def start_loop(self) -> None:
        import torch

        self.threads = torch.get_num_threads()  # as the loop sees it (after accelerate / Trainer set-up)
        self.setup_peak = _status_kib("VmHWM") / MIB
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.loop_start = _status_kib("VmRSS") / MIB

    def step_end(self) -> None:
        self.loop_peak = _status_kib("VmHWM") / MIB

    def as_dict(self) -> dict:
        return {
            "peak_rss_mib": max(self.setup_peak, self.loop_peak),  # the whole process
            "setup_peak_mib": self.setup_peak,  # imports, both models, data
            "loop_start_rss_mib": self.loop_start,
            "loop_peak_rss_mib": self.loop_peak,  # highest RSS while training
            "torch_threads": self.threads,
        }


def rollout_seed(seed: int, step: int) -> int:
    """vlmr1's per-step sampling seed (rl/trainer.py, rank 0); TRL is re-seeded with it too."""
    return seed * 1_000_003 + step * 1_009


def vlmr1_overrides(spec: dict) -> list[str]:
    """The matched settings as vlmr1 config overrides."""
    m, w = spec["matched"], spec["workload"]
    rows = w["prompts"] * w["group"]
    out = [
        f"data.train_files={spec['data']}",
        "data.task=rec",
        f"rollout.group_size={w['group']}",
        f"rollout.max_completion_length={m['max_completion_length']}",
        f"rollout.temperature={m['temperature']}",
        f"rollout.top_p={m['top_p']}",
        "rollout.top_k=0",
        "rollout.repetition_penalty=1.0",
        f"algo.beta={m['beta']}",
        "algo.kl_estimator=k3",
        f"algo.kl_bias_correction={str(m['kl_bias_correction']).lower()}",
        f"algo.eps_low={m['epsilon']}",
        f"algo.eps_high={m['epsilon']}",
        "algo.loss_aggregation=grpo",
        "algo.advantage_scale=group",
        "algo.num_iterations=1",
        "algo.importance_level=token",
        "algo.filter_zero_std=false",
        f"reward.funcs=[{', '.join(m['rewards'])}]",
        f"reward.weights=[{', '.join(str(x) for x in m['reward_weights'])}]",
        f"train.seed={spec['seed']}",
        f"train.steps={spec['steps']}",
        f"train.prompts_per_step={w['prompts']}",
        f"train.micro_batch_size={rows}",  # the whole P*G batch in one forward, as TRL's per-device batch
        f"train.lr={m['lr']}",
        "train.weight_decay=0.0",
        "train.warmup_steps=0",
        "train.lr_schedule=constant",
        f"train.max_grad_norm={m['max_grad_norm']}",
        "train.log_every=1",
        "train.save_every=0",
        "train.eval_every=0",
        "train.eval_before=false",
        "train.eval_after=false",
        "train.progress=false",
        "train.log_completions=0",  # TRL runs with log_completions=False too
        f"train.shared_prompt={'true' if spec['trainer'] == 'vlmr1' else 'false'}",
        f"train.output_dir={spec['out_dir']}",
        f"model.path={spec['model_path']}",
        "model.dtype=float32",
    ]
    if w.get("max_pixels"):
        out.append(f"model.max_pixels={w['max_pixels']}")
    return out


def run_vlmr1(spec: dict) -> dict:
    """vlmr1's ``train`` in this process, with a memory reset before its loop and a clock on its log.

    Stage times come from vlmr1's own timers (metrics.jsonl); the step's wall time is the interval
    between consecutive metric lines (one per step), so it also holds what the timers leave out.
    """
    import torch

    from vlmr1 import run as vlmr1_run
    from vlmr1.config import load_config
    from vlmr1.rl import trainer as vlmr1_trainer

    torch.set_num_threads(spec["threads"])
    probe = LoopProbe()
    marks: list[float] = []

    class LoopTimers(vlmr1_trainer.Timers):
        """Created right before the loop (trainer.py): the place to reset the memory peak."""

        def __init__(self):
            super().__init__()
            probe.start_loop()
            marks.append(time.perf_counter())

    class ClockedLogger(vlmr1_run.MetricsLogger):
        def log(self, step, metrics):
            super().log(step, metrics)
            marks.append(time.perf_counter())
            probe.step_end()

    vlmr1_trainer.Timers, vlmr1_run.MetricsLogger = LoopTimers, ClockedLogger  # the loop's timers; start_log's logger
    cfg = load_config(None, vlmr1_overrides(spec))
    vlmr1_trainer.train(cfg)
    lines = [json.loads(x) for x in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = []
    for row, start, end in zip(lines, marks, marks[1:]):
        steps.append({
            "total_s": end - start,
            "gen_s": row["time/gen"],
            "reward_s": row["time/reward"],
            # Log-probs and update: old (skipped at num_iterations=1), reference, policy forward/backward + optimizer.
            "train_s": row.get("time/old", 0.0) + row.get("time/ref", 0.0) + row["time/update"],
            "ref_s": row.get("time/ref", 0.0),
            "old_s": row.get("time/old", 0.0),  # ~0: vlmr1 computes no old log-probs at num_iterations=1
            "reward": row["reward"],
            "completion_length": row["completion_length"],
        })
    return {"steps": steps, **probe.as_dict()}


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit("usage: vs_trl_child.py SPEC.json RESULT.json")
    spec = json.loads(Path(argv[0]).read_text())
    if spec["trainer"] == "trl":
        from vs_trl_trl import run_trl  # beside this file: the script's folder is on sys.path

        result = run_trl(spec, LoopProbe(), rollout_seed)
    else:
        result = run_vlmr1(spec)
    Path(argv[1]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
