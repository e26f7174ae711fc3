"""Step time and peak memory of full fine-tuning vs LoRA vs frozen vision, GRPO on the tiny model.

Each mode runs in its own process (peak RSS is per process), on the embedded base checkpoint and
the generated REC task, with the same seed, prompts, group size and step count. Prints a table
and writes benchmarks/results/finetune_modes.json.

    python benchmarks/finetune_modes.py [--steps 12] [--prompts 8] [--group 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = {
    "full": [],
    "lora r=8": ["model.lora_rank=8", "model.lora_alpha=16"],
    "frozen vision": ["model.freeze_vision=true"],
    "frozen vision+projector": ["model.freeze_vision=true", "model.freeze_projector=true"],
    "full + grad. checkpointing": ["model.gradient_checkpointing=true"],
}


def run_one(overrides: list[str]) -> dict:
    """In a child process: train, then report per-step stage times and this process's peak RSS."""
    import torch

    from vlmr1.config import load_config
    from vlmr1.rl.trainer import train

    torch.set_num_threads(int(next((o.split("=")[1] for o in overrides if o.startswith("threads=")), "2")))
    overrides = [o for o in overrides if not o.startswith("threads=")]
    cfg = load_config(None, overrides)
    train(cfg)
    rows = [json.loads(line) for line in (Path(cfg.train.output_dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r][2:]  # the first two steps warm up allocators and caches
    total = [sum(v for k, v in r.items() if k.startswith("time/")) for r in steps]
    update = [r["time/update"] + r.get("time/ref", 0.0) + r.get("time/old", 0.0) for r in steps]
    gen = [r["time/gen"] for r in steps]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    # Counted after the peak was read, so this extra load does not show in the memory figure.
    from vlmr1.embedded import resolve_model_path
    from vlmr1.models.loading import load_model

    model = load_model(cfg, resolve_model_path(cfg.model.path), fresh_lora=True).model
    return {
        "step_s": statistics.median(total),
        "gen_s": statistics.median(gen),
        "train_s": statistics.median(update),
        "peak_rss_mib": peak,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print("RESULT " + json.dumps(run_one(json.loads(a.child))))
        return
    results = {}
    for name, extra in MODES.items():
        with tempfile.TemporaryDirectory() as tmp:
            overrides = [
                "data.num_train=256", "data.num_eval=0", f"train.steps={a.steps}", f"train.prompts_per_step={a.prompts}",
                f"rollout.group_size={a.group}", f"train.micro_batch_size={a.prompts * a.group}", "train.progress=false",
                f"train.output_dir={tmp}/run", "train.save_every=0", f"threads={a.threads}", *extra,
            ]  # fmt: skip
            out = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(overrides)], capture_output=True, text=True, check=True
            ).stdout
            results[name] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
            print(f"  {name}: {results[name]['step_s']:.2f} s/step", file=sys.stderr)
    base = results["full"]
    print(f"\nGRPO on the tiny model: {a.prompts} prompts x G={a.group}, {a.steps} steps (median of the last {a.steps - 2}), {a.threads} threads")
    print(f"{'mode':<28}{'trainable':>11}{'s/step':>8}{'gen s':>8}{'train s':>9}{'peak RSS MiB':>14}{'time vs full':>14}{'RSS vs full':>13}")
    for name, r in results.items():
        print(
            f"{name:<28}{r['trainable_params']:>11,}{r['step_s']:>8.2f}{r['gen_s']:>8.2f}{r['train_s']:>9.2f}{r['peak_rss_mib']:>14.0f}"
            f"{r['step_s'] / base['step_s']:>14.2f}{r['peak_rss_mib'] / base['peak_rss_mib']:>13.2f}"
        )
    out = Path(__file__).parent / "results" / "finetune_modes.json"
    out.parent.mkdir(exist_ok=True)
    meta = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(), "args": vars(a)}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
