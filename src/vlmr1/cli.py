"""Command line: ``vlmr1 train|sft|eval|data|compare|export``; configs are YAML plus dotted ``key=value`` overrides."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[config.yaml] [key=value ...]``: the optional first non-override is the YAML file."""
    yaml_path = None
    overrides = []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif yaml_path is None:
            yaml_path = a
        else:
            raise SystemExit(f"unexpected argument {a!r}: give one YAML file and key=value overrides")
    return yaml_path, overrides


def _help(command: str, what: str) -> None:
    from .config import settings_help

    print(
        f"usage: vlmr1 {command} [config.yaml] [section.field=value ...]\n\n{what}\n"
        "Settings come from their defaults, then the YAML file (sections of fields), then the overrides "
        "(values read as YAML, e.g. algo.beta=0.0 'reward.funcs=[iou, format]'). Recipes: configs/. "
        "Every setting, its default and what it does (src/vlmr1/config_fields.py):"
        + settings_help()
    )


def cmd_train(args: list[str]) -> None:
    from .config import load_config
    from .rl.trainer import train

    if {"-h", "--help"} & set(args):
        return _help("train", "GRPO training; with no arguments, the embedded default (tiny model, synthetic REC, CPU).")
    cfg = load_config(*_split_config_args(args))
    train(cfg)  # prints the before/after table; everything else is in the run folder
    print(f"summary: {cfg.train.output_dir}/summary.json")


def cmd_sft(args: list[str]) -> None:
    from .config import load_config
    from .sft import sft

    if {"-h", "--help"} & set(args):
        return _help("sft", "Supervised fine-tuning on the answers (algo.*, reward.* but eval_format, and rollout.* but "
                     "max_completion_length do not apply and are refused).")
    cfg = load_config(*_split_config_args(args))
    sft(cfg)
    print(f"summary: {cfg.train.output_dir}/summary.json")


def cmd_eval(argv: list[str]) -> None:
    from .data.jsonl import load_samples
    from .embedded import file_methods, resolve_model_path
    from .evaluate import evaluate, print_metrics
    from .models.loading import load_adapter

    p = argparse.ArgumentParser(
        prog="vlmr1 eval",
        description="Greedy evaluation of any task (REC, detection, math/counting, GUI defects), "
        "chosen per sample by its accu_reward_method; each data file is one split.",
    )
    p.add_argument("--model", default="embedded", help="checkpoint folder (default: the embedded base)")
    p.add_argument("--data", required=True, help="colon-separated VLM-R1 JSONL files, each scored as its own split")
    p.add_argument("--image-folders", default=None, help="colon-separated image folders paired with --data")
    p.add_argument("--task", default="rec", help="question template (see vlmr1.data.jsonl.QUESTION_TEMPLATES)")
    p.add_argument(
        "--reward-methods",
        default=None,
        help="colon-separated accuracy methods paired with --data, for rows without accu_reward_method "
        "(default: rec for the rec/rec_think tasks, else default)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of each file")
    p.add_argument("--format-reward", default=None, help="a registered reward also reported as format_rate (e.g. box_format, format)")
    p.add_argument("--out", default=None, help="folder for per-sample predictions (default: beside each data file)")
    p.add_argument("--samples", type=int, default=0, help="also sample K completions per prompt: pass@k (k = 1, 2, 4, .. K) and mean@K")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature for --samples (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --samples draws")
    a = p.parse_args(argv)
    if a.samples < 0 or (a.temperature is not None and (not a.samples or a.temperature <= 0)):
        raise SystemExit("--samples must be >= 0, and --temperature (> 0) applies only with --samples")
    from .rl.rollout import Sampling

    sampling = Sampling(max_new_tokens=a.max_new_tokens, temperature=1.0 if a.temperature is None else a.temperature)
    adapter = load_adapter(resolve_model_path(a.model))
    files = a.data.split(":")
    folders = a.image_folders.split(":") if a.image_folders else [None] * len(files)
    if len(folders) != len(files):
        raise SystemExit(f"--image-folders has {len(folders)} entries for {len(files)} --data files")
    methods = file_methods(a.reward_methods, a.data, a.task)
    if len(methods) != len(files):
        raise SystemExit(f"--reward-methods has {len(methods)} entries for {len(files)} --data files")
    for file, folder, method in zip(files, folders, methods):
        samples = load_samples(file, folder, reward_methods=[method]).samples[: a.limit]
        name = Path(file).stem
        out = Path(a.out) / f"{name}.predictions.jsonl" if a.out else Path(file).with_suffix(".predictions.jsonl")
        metrics = evaluate(
            adapter.model, adapter, samples, a.task, a.batch_size, a.max_new_tokens, predictions=out, format_reward=a.format_reward,
            sampling=sampling, num_samples=a.samples, seed=a.seed,
        )
        print_metrics(name, metrics)
        print(f"predictions: {out}")


def cmd_data(argv: list[str]) -> None:
    from .data.synthetic import GENERATORS

    p = argparse.ArgumentParser(
        prog="vlmr1 data",
        description="Write a synthetic task as VLM-R1 JSONL + PNG files: rec (referring boxes), det (labelled "
        "boxes of listed categories), count (counting/arithmetic, math-verified), gui (before/after screenshot defects).",
    )
    p.add_argument("task", choices=sorted(GENERATORS))
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--split", choices=["in", "ood"], default="in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-objects", type=int, default=None, help="rec/det: fewest shapes per image")
    p.add_argument("--max-objects", type=int, default=None, help="rec/det: most shapes per image")
    p.add_argument("--name", default=None, help="file stem (default: the split)")
    a = p.parse_args(argv)
    kwargs = {k: v for k, v in (("min_objects", a.min_objects), ("max_objects", a.max_objects)) if v is not None}
    if kwargs and a.task not in ("rec", "det"):
        raise SystemExit(f"--min-objects/--max-objects apply to rec and det, not {a.task}")
    print(GENERATORS[a.task](Path(a.out), a.n, a.split, seed=a.seed, name=a.name, **kwargs))


def cmd_compare(argv: list[str]) -> None:
    from .compare import build_study, is_main_process, run_study, table, write_outputs

    p = argparse.ArgumentParser(
        prog="vlmr1 compare",
        description="GRPO versus SFT from one checkpoint over several seeds, same training samples seen, "
        "evaluated in and out of domain at the same steps; writes compare.md/.json/.png. With no "
        "data overrides: the embedded base fine-tuned on a narrow synthetic REC set (see vlmr1.compare).",
    )
    p.add_argument("--out", default="runs/compare", help="study folder (finished runs in it are reused)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--grpo", default=None, help="YAML config for the GRPO runs")
    p.add_argument("--sft", default=None, help="YAML config for the SFT runs")
    p.add_argument("--narrow-samples", type=int, default=256, help="default study: distinct training samples generated")
    p.add_argument("overrides", nargs="*", help="section.field=value, applied to both methods")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    study = build_study(Path(a.out), seeds, a.overrides, a.grpo, a.sft, a.narrow_samples)
    results = run_study(study)
    if not is_main_process():
        return
    paths = write_outputs(study, results)
    print("\n" + table(results))
    print(f"table: {paths['md']}\nplot: {paths['png']}")


def cmd_export(argv: list[str]) -> None:
    from .models.finetune import is_lora_checkpoint
    from .models.loading import merge_lora

    p = argparse.ArgumentParser(
        prog="vlmr1 export", description="Merge a LoRA checkpoint into its base model: a full HF checkpoint for from_pretrained."
    )
    p.add_argument("checkpoint", help="a LoRA run's final/ or checkpoint-N/ folder")
    p.add_argument("--out", required=True, help="folder for the merged checkpoint")
    p.add_argument("--merge-lora", action="store_true", required=True, help="merge the LoRA weights into the base (required)")
    a = p.parse_args(argv)
    if not is_lora_checkpoint(a.checkpoint):
        raise SystemExit(f"{a.checkpoint}: not a LoRA checkpoint (no adapter_config.json); it is already a full checkpoint")
    print(merge_lora(a.checkpoint, a.out))


def cmd_report(argv: list[str]) -> None:
    from .report import write_report

    p = argparse.ArgumentParser(
        prog="vlmr1 report",
        description="A self-contained HTML report of a run folder: summary, training and evaluation curves, "
        "and a gallery of the best and worst evaluation samples with their boxes drawn.",
    )
    p.add_argument("run_dir", help="a vlmr1 train or vlmr1 sft run folder")
    p.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    p.add_argument("--gallery", type=int, default=8, help="best and worst samples shown per split (default 8 + 8)")
    a = p.parse_args(argv)
    try:
        print(write_report(a.run_dir, a.out, a.gallery))
    except (FileNotFoundError, ValueError) as e:  # a wrong folder or a corrupt JSON line: say which, no traceback
        raise SystemExit(f"vlmr1 report: {e}") from None


COMMANDS = {
    "train": (cmd_train, "GRPO training: vlmr1 train [config.yaml] [section.field=value ...]"),
    "sft": (cmd_sft, "supervised fine-tuning: vlmr1 sft [config.yaml] [section.field=value ...]"),
    "eval": (cmd_eval, "greedy evaluation of a checkpoint: vlmr1 eval --model DIR --data a.jsonl[:b.jsonl]"),
    "data": (cmd_data, "generate synthetic task data"),
    "compare": (cmd_compare, "GRPO vs SFT over seeds, in and out of domain: vlmr1 compare [--seeds 0,1,2] [key=value ...]"),
    "export": (cmd_export, "merge a LoRA checkpoint into a full one: vlmr1 export CKPT --out DIR --merge-lora"),
    "report": (cmd_report, "HTML report of a run folder: vlmr1 report RUN_DIR [--out DIR] [--gallery N]"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # Nothing is ever fetched from a model hub: every model and tokenizer is local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["train"]
        else:
            print("usage: vlmr1 COMMAND [args]\n")
            for name, (_, doc) in COMMANDS.items():
                print(f"  {name:<9}{doc}")
            return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(f"unknown command {name!r}; one of {sorted(COMMANDS)}")
    from .config import ConfigError

    try:
        COMMANDS[name][0](rest)
    except ConfigError as e:
        raise SystemExit(f"config error: {e}") from None


if __name__ == "__main__":
    main()
