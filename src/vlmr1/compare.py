"""RL versus SFT from one checkpoint: same prompts, same samples seen, evaluated in and out of domain.

``vlmr1 compare`` runs ``vlmr1 sft`` and ``vlmr1 train`` (GRPO) for each seed from the same
starting model on the same training set, with the same number of steps and samples per step, so
the two differ only in the learning signal (answers to copy versus rewards for its own samples).
Both evaluate every held-out split at the same steps. The table gives, per method, split and
step, the mean and the spread (max - min) over seeds; a PNG plots the same.

The default reproduces the regime of VLM-R1's claim on this CPU: the embedded base (docs/base-checkpoint.md)
is fine-tuned on a *narrow* set of 256 scenes of one style (exactly two large shapes, 28-40 px) for
6 epochs, and is evaluated on the same style (``narrow``, in-domain), on the embedded default's
broad scenes of 2-4 shapes of 16-40 px (``broad``), on those scenes around unseen colour-shape
pairs (``ood_pairs``) and on the out-of-domain split (the same unseen pairs, more shapes, textured
background, ``ood``). Every split follows
data.distinct_kinds, as the embedded default does. GRPO there scales advantages by the step's
reward std (DEFAULT_STUDY_GRPO says why); otherwise it is the embedded default's.
Real models and data: pass ``model.path=...``, ``data.train_files=...`` and ``data.eval_files=...``
as overrides (they apply to both methods), and GRPO/SFT settings through ``--grpo``/``--sft`` YAML.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from .config import EMBEDDED, Config, ConfigError, load_config

METHODS = ("sft", "grpo")
# The narrow fine-tuning style and the held-out splits of the default study.
NARROW = {"min_objects": 2, "max_objects": 2, "min_size": 28, "max_size": 40}
NARROW_TRAIN, NARROW_EVAL = 256, 500
DATA_SEEDS = {"train": 11, "narrow": 12, "broad": 1_000_003, "ood_pairs": 2_000_003, "ood": 2_000_003}

# Shared by both methods unless overridden: 16 samples per step for 96 steps = 6 epochs of 256.
# Everything else is the Config default, so GRPO's reward and sampling are the embedded
# default's (docs/embedded-default.md).
SHARED = {
    "train.steps": 96,
    "train.prompts_per_step": 16,
    "train.eval_every": 24,
    "train.lr": 1e-4,
    "train.progress": False,
}
# GRPO in the default study only: divide advantages by the std of the whole step's rewards, not of
# each group's. The base solves most narrow prompts (with group scaling, 26-29 of the 40 logged
# groups of seeds 0 and 1 had every sample at acc50_tight 1), so such a group's rewards differ
# only by IoU gaps (std 0.02 within it, 0.37-0.40 over the step). The group's own std turned
# those gaps into mean |advantage| 0.7, the same push as a group split between right and wrong
# boxes, and GRPO drifted on prompts it had already solved. Batch scaling gives those groups
# about 0.05 (Dr. GRPO's criticism of the group std; "group mean, batch std" in Lite PPO).
# Studies on the user's data keep the Config default.
DEFAULT_STUDY_GRPO = {"algo.advantage_scale": "batch"}


@dataclass
class Study:
    out: Path
    seeds: list[int]
    configs: dict[str, Config]  # method -> config (output_dir and seed are set per run)


def write_default_data(root: Path, narrow_train: int = NARROW_TRAIN, distinct_kinds: bool = True) -> dict[str, str]:
    """The narrow training set and three held-out splits; returns data.* overrides.

    Sample i depends only on (seed, split, i), so a larger ``narrow_train`` extends the same set.
    ``distinct_kinds``: every split follows data.distinct_kinds, as the embedded default does.
    """
    from .data.synthetic.rec import generate_rec

    root.mkdir(parents=True, exist_ok=True)
    dk = {"distinct_kinds": distinct_kinds}
    train = generate_rec(root, narrow_train, "in", seed=DATA_SEEDS["train"], name="train", **NARROW, **dk)
    narrow = generate_rec(root, NARROW_EVAL, "in", seed=DATA_SEEDS["narrow"], name="narrow", **NARROW, **dk)
    # Broad: the embedded default's in-domain scenes (2-4 shapes, 16-40 px); ood: the embedded OOD
    # split (held-out colour-shape pairs, two more shapes, textured background), where the base
    # itself is near the floor; ood_pairs: ood's own targets (same seed, so sample i asks for the
    # same pair at the same box) with broad's object counts on the plain ramp, which separates
    # composition from clutter.
    scenes = {"min_objects": 2, "max_objects": 4, **dk}
    broad = generate_rec(root, NARROW_EVAL, "in", seed=DATA_SEEDS["broad"], name="broad", **scenes)
    pairs = generate_rec(root, NARROW_EVAL, "ood", seed=DATA_SEEDS["ood_pairs"], name="ood_pairs", ood_shift="pairs", **scenes)
    ood = generate_rec(root, NARROW_EVAL, "ood", seed=DATA_SEEDS["ood"], name="ood", **scenes)
    return {"data.train_files": str(train), "data.eval_files": ":".join(str(p) for p in (narrow, broad, pairs, ood))}


def _as_overrides(d: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in d.items()]


def _yaml_overrides(path: str | None) -> list[str]:
    """A method's YAML as overrides, so it can sit between the study's defaults and the user's overrides."""
    if path is None:
        return []
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: expected a mapping of sections, each a mapping of fields")
    return _as_overrides({f"{section}.{name}": v for section, values in data.items() for name, v in values.items()})


def build_study(
    out: Path,
    seeds: list[int],
    overrides: list[str],
    grpo_yaml: str | None,
    sft_yaml: str | None,
    narrow_train: int = NARROW_TRAIN,
) -> Study:
    """Configs for both methods; checks that they see the same number of training samples.

    ``narrow_train``: size of the default study's generated training set (ignored with data.train_files).
    """
    if not seeds:
        raise ConfigError("compare: give at least one seed")
    base = load_config(None, overrides)
    data_overrides: list[str] = []
    grpo_defaults: list[str] = []
    if base.data.train_files == EMBEDDED:
        if base.data.eval_files is not None:
            raise ConfigError("compare: data.eval_files needs data.train_files (the default study generates both)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("compare: the default study generates its data in one process; run it without a launcher")
        data_overrides = _as_overrides(write_default_data(out / "data", narrow_train, base.data.distinct_kinds))
        grpo_defaults = _as_overrides(DEFAULT_STUDY_GRPO)
        # Spent on the generated files, which the runs then read as their own data.
        overrides = [o for o in overrides if not o.startswith("data.distinct_kinds=")]
    # Precedence: the study's defaults, then the method's YAML, then the user's overrides.
    shared = _as_overrides(SHARED) + data_overrides
    configs = {
        "grpo": load_config(None, shared + grpo_defaults + _yaml_overrides(grpo_yaml) + overrides),
        "sft": load_config(None, shared + _yaml_overrides(sft_yaml) + overrides),
    }
    seen = {m: c.train.steps * c.train.prompts_per_step for m, c in configs.items()}
    if len(set(seen.values())) != 1:
        raise ConfigError(f"compare: methods must see the same number of training samples (steps x prompts_per_step): {seen}")
    if len({c.train.eval_every for c in configs.values()}) != 1:
        raise ConfigError("compare: both methods must evaluate at the same steps (train.eval_every)")
    for m, c in configs.items():
        if c.data.eval_files is None:
            raise ConfigError(f"compare: {m} has no held-out data (data.eval_files)")
    return Study(out, seeds, configs)


def is_main_process() -> bool:
    """Under ``accelerate launch``/torchrun every rank runs the study; only rank 0 writes its files."""
    return int(os.environ.get("RANK", "0")) == 0


def run_dir(study: Study, method: str, seed: int) -> Path:
    return study.out / f"{method}-seed{seed}"


def run_study(study: Study) -> dict:
    """Every (method, seed) run in turn; a finished run (summary.json present) is not repeated."""
    from .rl.trainer import train
    from .sft import sft

    runners = {"grpo": train, "sft": sft}
    for seed in study.seeds:
        for method in METHODS:
            out = run_dir(study, method, seed)
            if (out / "summary.json").exists():
                print(f"compare: {out} is complete, reusing it")
                continue
            cfg = study.configs[method]
            cfg.train.output_dir, cfg.train.seed, cfg.train.resume = str(out), seed, "auto"
            print(f"compare: {method} seed {seed} -> {out}")
            start = time.perf_counter()
            runners[method](cfg)
            if is_main_process():
                (out / "wall_seconds.json").write_text(json.dumps({"wall_seconds": time.perf_counter() - start}))
    return collect(study)


def eval_curves(metrics_path: Path) -> dict[str, dict[int, dict[str, float]]]:
    """split -> step -> metrics from a run's metrics.jsonl (``eval/...`` lines and the final ``eval_after/...``)."""
    from .report import eval_series, read_metrics

    curves: dict[str, dict[int, dict[str, float]]] = {}
    for split, metrics in eval_series(read_metrics(metrics_path)).items():
        for metric, points in metrics.items():
            for step, value in points:
                curves.setdefault(split, {}).setdefault(step, {})[metric] = value
    return curves


def train_seconds(metrics_path: Path) -> float:
    """Seconds spent training (the ``time/*`` totals), evaluation excluded.

    ``time/step`` holds every stage of a step, the step's evaluation included, so the stages
    inside it are not added again; ``time/save``, the checkpoint write, lies outside it. A line
    without ``time/step`` adds its stages."""
    total = 0.0
    for line in metrics_path.read_text().splitlines():
        times = {k: v for k, v in json.loads(line).items() if k.startswith("time/")}
        if "time/step" in times:
            total += times["time/step"] - times.get("time/eval", 0.0) + times.get("time/save", 0.0)
        else:
            total += sum(v for k, v in times.items() if k != "time/eval")
    return total


def spread(values: list[float]) -> dict[str, float]:
    lo, hi = min(values), max(values)
    return {"mean": statistics.fmean(values), "spread": hi - lo, "min": lo, "max": hi, "n": len(values)}


def collect(study: Study) -> dict:
    """Per method, split, metric and step: mean and spread over seeds; per method: training seconds."""
    results: dict = {"seeds": study.seeds, "curves": {}, "train_seconds": {}, "wall_seconds": {}}
    for method in METHODS:
        per_seed = [eval_curves(run_dir(study, method, s) / "metrics.jsonl") for s in study.seeds]
        curves: dict = {}
        for split in dict.fromkeys(k for c in per_seed for k in c):  # the order of data.eval_files
            steps = sorted(set.intersection(*(set(c.get(split, {})) for c in per_seed)))
            metrics = sorted({m for c in per_seed for row in c.get(split, {}).values() for m in row})
            curves[split] = {
                metric: {step: spread([c[split][step][metric] for c in per_seed]) for step in steps if all(metric in c[split][step] for c in per_seed)}
                for metric in metrics
            }
        results["curves"][method] = curves
        results["train_seconds"][method] = spread([train_seconds(run_dir(study, method, s) / "metrics.jsonl") for s in study.seeds])
        walls = [run_dir(study, method, s) / "wall_seconds.json" for s in study.seeds]
        if all(p.exists() for p in walls):
            results["wall_seconds"][method] = spread([json.loads(p.read_text())["wall_seconds"] for p in walls])
    return results


def main_metric(results: dict) -> str:
    """The first headline metric every split reports (acc50 for REC, map for detection, ...)."""
    for name in ("acc50", "map", "accuracy", "defect_accuracy"):
        if all(name in split for curves in results["curves"].values() for split in curves.values()):
            return name
    first = next(iter(next(iter(results["curves"].values())).values()))
    return sorted(first)[0]


def table(results: dict, metric: str | None = None) -> str:
    """Markdown: one row per method and split, one column per evaluated step (mean ± spread)."""
    metric = metric or main_metric(results)
    steps = sorted({s for c in results["curves"].values() for split in c.values() for s in split.get(metric, {})})
    head = "| method | split | " + " | ".join(f"step {s}" for s in steps) + " | change |\n"
    lines = [head, "|---|---|" + "---|" * (len(steps) + 1) + "\n"]
    for method, curves in results["curves"].items():
        for split, by_metric in curves.items():
            points = by_metric.get(metric, {})
            cells = [f"{points[s]['mean']:.3f} ± {points[s]['spread']:.3f}" if s in points else "-" for s in steps]
            change = points[max(points)]["mean"] - points[min(points)]["mean"] if points else float("nan")
            lines.append(f"| {method} | {split} | " + " | ".join(cells) + f" | {change:+.3f} |\n")
    lines.append(f"\n{metric}: mean ± spread (max - min) over seeds {results['seeds']}.\n")
    for method, t in results["train_seconds"].items():
        wall = results["wall_seconds"].get(method)
        extra = f", whole run with evaluations {wall['mean']:.0f} s" if wall else ""
        lines.append(f"{method}: training {t['mean']:.0f} s per seed (spread {t['spread']:.0f} s){extra}.\n")
    return "".join(lines)


def plot(results: dict, path: Path, metric: str | None = None) -> Path:
    """One panel per split (in data.eval_files order): mean curve per method, band from the seeds' min to max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or main_metric(results)
    splits = list(dict.fromkeys(s for c in results["curves"].values() for s in c))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 3.4), squeeze=False)
    colours = {"grpo": "tab:blue", "sft": "tab:orange"}
    for ax, split in zip(axes[0], splits):
        for method, curves in results["curves"].items():
            points = curves.get(split, {}).get(metric, {})
            if not points:
                continue
            steps = sorted(points)
            colour = colours.get(method)
            ax.plot(steps, [points[s]["mean"] for s in steps], marker="o", label=method.upper(), color=colour)
            lo, hi = [points[s]["min"] for s in steps], [points[s]["max"] for s in steps]
            ax.fill_between(steps, lo, hi, alpha=0.2, color=colour)
        ax.set_title(split)
        ax.set_xlabel("step")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle(f"GRPO vs SFT, {metric}: mean over seeds {results['seeds']}, band from the lowest to the highest seed", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(study: Study, results: dict) -> dict[str, Path]:
    """compare.json, compare.md and compare.png in the study folder."""
    paths = {"json": study.out / "compare.json", "md": study.out / "compare.md", "png": study.out / "compare.png"}
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["md"].write_text(table(results))
    plot(results, paths["png"])
    return paths
