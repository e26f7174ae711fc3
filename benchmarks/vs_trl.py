"""vlmr1's GRPO trainer against TRL's GRPOTrainer on identical work, on this CPU.

    python benchmarks/vs_trl.py [--steps 8] [--rounds 2] [--workloads g4,g8,large]
                                [--trainers vlmr1,trl,vlmr1-repeated] [--out benchmarks/results/vs_trl.json]

Needs TRL (``pip install -e '.[bench]'``, which pins trl==1.16.0). See benchmarks/README-vs-trl.md.

Each run is one trainer on one workload in its own process (``vs_trl_child.py``), so peak RSS is
that trainer's. Trainers:
- ``vlmr1``: vlmr1's default, each prompt encoded once per group (``train.shared_prompt=true``);
- ``vlmr1-repeated``: vlmr1 with the prompt repeated G times (``train.shared_prompt=false``), the
  same data flow as TRL's, to show what prefill-once rollouts and shared log-probs are worth;
- ``trl``: TRL's GRPOTrainer, set up in ``vs_trl_trl.py`` to do the same work.
Each round runs every trainer once per workload, in an order rotated from round to round, so
that slow drift of the shared machine does not always hit the same trainer.

Per optimizer step: wall seconds, generation seconds, training seconds (reference log-probs,
policy forward/backward, optimizer); medians over the steps after ``--warmup`` of every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINERS = ("vlmr1", "trl", "vlmr1-repeated")  # round 0's order; later rounds rotate it

# Settings both trainers get (vs_trl_child.vlmr1_overrides and vs_trl_trl.grpo_config read them).
MATCHED = {
    "max_completion_length": 24,  # vlmr1's default for the REC task
    "temperature": 0.7,
    "top_p": 1.0,
    "beta": 0.04,
    "kl_bias_correction": False,  # vlmr1's default (plain k3); TRL's use_bias_correction_kl defaults to True
    "epsilon": 0.2,
    "lr": 1e-4,
    "max_grad_norm": 1.0,
    "rewards": ["acc50_tight", "iou", "box_format"],  # vlmr1's default (config.RewardConfig)
    "reward_weights": [1.0, 0.5, 0.1],
}


@dataclass
class Workload:
    name: str
    model: str  # what the table says about the model and image
    group: int  # G completions per prompt
    prompts: int  # P prompts per step
    image_size: int  # generated square images, pixels
    max_pixels: int | None  # Qwen image processor bound (None: the checkpoint's, 112 x 112)
    min_shape: int = 16  # generated shapes' side range, pixels
    max_shape: int = 40

    @property
    def title(self) -> str:
        return f"{self.model}, G={self.group} P={self.prompts}"


WORKLOADS = {
    "g4": Workload("g4", "tiny base, 112 px", 4, 16, 112, None),
    "g8": Workload("g8", "tiny base, 112 px", 8, 16, 112, None),
    # 448 x 448 = 200,704 pixels: 32 x 32 patches of 14 px, merged 2 x 2 -> 256 image tokens per prompt.
    # The same tiny model: what grows is the prompt. Shapes scale with the image.
    "large": Workload("large", "tiny base, 448 px (256 image tokens)", 8, 4, 448, 448 * 448, 64, 160),
}


def make_data(w: Workload, n: int, root: Path, seed: int) -> Path:
    """``n`` REC samples for ``w`` (one pass over them covers every step)."""
    from vlmr1.data.synthetic.rec import generate_rec

    return generate_rec(root / w.name, n, "in", seed=seed, image_size=w.image_size, name="train",
                        min_size=w.min_shape, max_size=w.max_shape)


def run_child(spec: dict, root: Path) -> dict:
    """One trainer on one workload in a fresh process; returns its per-step rows and memory."""
    run_dir = root / f"{spec['workload']['name']}-{spec['trainer']}-r{spec['round']}"
    run_dir.mkdir(parents=True)
    spec = {**spec, "out_dir": str(run_dir / "out")}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    log = run_dir / "log.txt"
    start = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run([sys.executable, str(HERE / "vs_trl_child.py"), str(run_dir / "spec.json"),
                               str(run_dir / "result.json")], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"{run_dir.name} failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    result = json.loads((run_dir / "result.json").read_text())
    if result["torch_threads"] != spec["threads"]:
        raise RuntimeError(f"{run_dir.name}: trained with {result['torch_threads']} torch threads, not {spec['threads']}")
    result["wall_s"] = time.perf_counter() - start
    for s in result["steps"]:  # what no stage timer holds: TRL's second image pass for the log-prob inputs, logging, data
        s["other_s"] = s["total_s"] - s["gen_s"] - s["reward_s"] - s["train_s"]
    return result


def matching_steps(by_trainer: dict[str, list[dict]]) -> int:
    """Leading steps of round 1 in which every trainer had the same mean reward and completion length.

    All trainers sample with the same seed per step, so until float rounding flips a sampled token
    they draw the same completions: evidence that they do the same work.
    """
    seqs = [[(s["reward"], s["completion_length"]) for s in runs[0]["steps"]] for runs in by_trainer.values()]
    n = 0
    while all(n < len(q) for q in seqs) and len({q[n] for q in seqs}) == 1:
        n += 1
    return n


def summarise(runs: list[dict], warmup: int) -> dict:
    """Medians over post-warm-up steps of all rounds; reward means over each run's two halves."""
    steps = [s for r in runs for s in r["steps"][warmup:]]
    if not steps:
        raise ValueError(f"no steps left after {warmup} warm-up steps: raise --steps")
    med = {k: statistics.median(s[k] for s in steps) for k in ("total_s", "gen_s", "reward_s", "train_s", "ref_s", "other_s")}
    halves = []
    for r in runs:
        rewards = [s["reward"] for s in r["steps"]]
        half = len(rewards) // 2
        halves.append((statistics.fmean(rewards[:half] or rewards), statistics.fmean(rewards[half:])))
    return {
        **med,
        "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in runs),
        "loop_peak_rss_mib": statistics.median(r["loop_peak_rss_mib"] for r in runs),
        "loop_growth_mib": statistics.median(r["loop_peak_rss_mib"] - r["loop_start_rss_mib"] for r in runs),
        "reward_first_half": statistics.fmean(h[0] for h in halves),
        "reward_second_half": statistics.fmean(h[1] for h in halves),
        "reward_mean": statistics.fmean(s["reward"] for r in runs for s in r["steps"]),
        "completion_length": statistics.fmean(s["completion_length"] for r in runs for s in r["steps"]),
        "steps_measured": len(steps),
        "step1_reward": [r["steps"][0]["reward"] for r in runs],
    }


def environment() -> dict:
    """Versions and machine, recorded with the results."""
    import platform

    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    git = lambda *a: subprocess.run(["git", *a], cwd=HERE, capture_output=True, text=True).stdout.strip()  # noqa: E731
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), platform.processor())
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "python": platform.python_version(),
        "vlmr1_commit": git("rev-parse", "HEAD"),
        "vlmr1_dirty": bool(git("status", "--porcelain", "--", "src")),
        "cpu": cpu,
        "cpus_online": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
    }


def ratio(a: float, b: float | None) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(summary: dict, workloads: list[Workload]) -> str:
    """Markdown table, one row per (workload, trainer); ratios are this trainer / TRL."""
    head = ("| workload | trainer | s/step | gen s | train s | other s | peak RSS MiB | loop growth MiB "
            "| reward 1st / 2nd half | s/step ÷ TRL | peak RSS ÷ TRL |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for w in workloads:
        rows = summary.get(w.name, {})
        trl = rows.get("trl")
        for name, s in rows.items():
            lines.append(
                f"| {w.title} | {name} | {s['total_s']:.2f} | {s['gen_s']:.2f} | {s['train_s']:.2f} | {s['other_s']:.2f} "
                f"| {s['peak_rss_mib']:.0f} | {s['loop_growth_mib']:.0f} "
                f"| {s['reward_first_half']:.3f} / {s['reward_second_half']:.3f} "
                f"| {ratio(s['total_s'], trl and trl['total_s'])} | {ratio(s['peak_rss_mib'], trl and trl['peak_rss_mib'])} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (the first --warmup are not timed)")
    p.add_argument("--warmup", type=int, default=2, help="steps per run left out of the timing medians")
    p.add_argument("--rounds", type=int, default=2, help="repetitions of every (workload, trainer) run")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {list(WORKLOADS)}")
    p.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated, from {list(TRAINERS)}")
    p.add_argument("--group", type=int, default=None, help="override G of every workload (for quick checks)")
    p.add_argument("--prompts", type=int, default=None, help="override P of every workload (for quick checks)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "vs_trl.json"))
    p.add_argument("--keep", default=None, help="folder to keep run folders (logs, specs) in; default: a temp folder, removed")
    args = p.parse_args(argv)
    bad = [x for x in args.workloads.split(",") if x not in WORKLOADS] + [x for x in args.trainers.split(",") if x not in TRAINERS]
    if bad:
        p.error(f"unknown workload/trainer names: {bad}")
    if args.steps <= args.warmup:
        p.error(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from vlmr1.embedded import BASE_CHECKPOINT

    workloads = [WORKLOADS[x] for x in args.workloads.split(",")]
    workloads = [Workload(**{**asdict(w), **{k: v for k, v in (("group", args.group), ("prompts", args.prompts)) if v}})
                 for w in workloads]
    chosen = [t for t in TRAINERS if t in args.trainers.split(",")]
    tmp = tempfile.TemporaryDirectory(prefix="vs_trl-") if args.keep is None else None
    root = Path(args.keep or tmp.name)
    raw: dict[str, dict[str, list[dict]]] = {w.name: {t: [] for t in chosen} for w in workloads}
    data = {w.name: make_data(w, w.prompts * args.steps, root / "data", args.seed) for w in workloads}
    started = time.perf_counter()
    for rnd in range(args.rounds):
        order = [chosen[(i + rnd) % len(chosen)] for i in range(len(chosen))]
        for w in workloads:
            for trainer in order:
                spec = {"trainer": trainer, "workload": asdict(w), "round": rnd, "steps": args.steps, "seed": args.seed,
                        "threads": args.threads, "data": str(data[w.name]), "model_path": str(BASE_CHECKPOINT),
                        "matched": MATCHED}
                result = run_child(spec, root / "runs")
                raw[w.name][trainer].append(result)
                med = statistics.median(s["total_s"] for s in result["steps"][args.warmup:])
                print(f"round {rnd + 1}/{args.rounds} {w.name:6s} {trainer:15s} {med:6.2f} s/step  "
                      f"peak {result['peak_rss_mib']:6.0f} MiB  ({result['wall_s']:.0f} s)", flush=True)
    summary = {w: {t: summarise(runs, args.warmup) for t, runs in by.items()} for w, by in raw.items()}
    report = {
        "command": "python benchmarks/vs_trl.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "environment": environment(),
        "settings": {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "threads": args.threads,
                     "seed": args.seed, "matched": MATCHED, "workloads": [asdict(w) for w in workloads]},
        "summary": summary,
        "checks": {w: {**(by["trl"][0]["checks"] if "trl" in by else {}), "matching_steps": matching_steps(by)}
                   for w, by in raw.items()},
        "runs": raw,
        "total_wall_s": time.perf_counter() - started,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print()
    print(table(summary, workloads))
    for w in workloads:
        c = report["checks"][w.name]
        print(f"{w.name}: {c.get('prompt_tokens', '?')} prompt tokens ({c.get('image_tokens', '?')} image); "
              f"same rewards and completion lengths in all trainers for the first {c['matching_steps']} of {args.steps} steps")
    print(f"\n{report['environment']['cpu']}; torch {report['environment']['torch']}, transformers "
          f"{report['environment']['transformers']}, trl {report['environment']['trl']}; {args.threads} threads; "
          f"medians of {args.steps - args.warmup} steps x {args.rounds} rounds. Written to {args.out}")
    if tmp is not None:
        tmp.cleanup()
    return report


if __name__ == "__main__":
    main()
