"""Command line: ``vlmr1 train|sft|eval|data``; configs are YAML plus dotted ``key=value`` overrides."""

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


def cmd_train(args: list[str]) -> None:
    from .config import load_config
    from .rl.trainer import train

    cfg = load_config(*_split_config_args(args))
    train(cfg)  # prints the before/after table; everything else is in the run folder
    print(f"summary: {cfg.train.output_dir}/summary.json")


def cmd_sft(args: list[str]) -> None:
    from .config import load_config
    from .sft import sft

    cfg = load_config(*_split_config_args(args))
    sft(cfg)
    print(f"summary: {cfg.train.output_dir}/summary.json")


def cmd_eval(argv: list[str]) -> None:
    import torch

    from .data.jsonl import load_samples
    from .embedded import resolve_model_path
    from .evaluate import evaluate_rec
    from .models.adapter import load_adapter

    p = argparse.ArgumentParser(prog="vlmr1 eval", description="Greedy REC evaluation: Acc@0.5, mean IoU, format rate.")
    p.add_argument("--model", default="embedded", help="checkpoint folder (default: the embedded base)")
    p.add_argument("--data", required=True, help="colon-separated VLM-R1 JSONL files")
    p.add_argument("--image-folders", default=None, help="colon-separated image folders paired with --data")
    p.add_argument("--task", default="rec", help="question template")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples")
    p.add_argument("--format-reward", default="box_format", help="reward reported as format rate (e.g. format)")
    p.add_argument("--out", default=None, help="per-sample predictions JSONL (default: predictions.jsonl beside --data)")
    a = p.parse_args(argv)
    torch.set_grad_enabled(False)
    adapter = load_adapter(resolve_model_path(a.model))
    samples = load_samples(a.data, a.image_folders).samples[: a.limit]
    out = Path(a.out) if a.out else Path(a.data.split(":")[0]).with_suffix(".predictions.jsonl")
    metrics = evaluate_rec(
        adapter.model, adapter, samples, a.task, a.batch_size, a.max_new_tokens, predictions=out, format_reward=a.format_reward
    )
    print(f"{'split':<12}{'n':>6}{'acc50':>8}{'mean_iou':>10}{'format':>8}")
    print(f"{Path(a.data).stem:<12}{metrics['n']:>6}{metrics['acc50']:>8.3f}{metrics['mean_iou']:>10.3f}{metrics['format_rate']:>8.3f}")
    print(f"predictions: {out}")


def cmd_data(argv: list[str]) -> None:
    from .data.synthetic import generate_rec

    p = argparse.ArgumentParser(prog="vlmr1 data", description="Write a synthetic task as VLM-R1 JSONL + PNG files.")
    p.add_argument("task", choices=["rec"])
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--split", choices=["in", "ood"], default="in")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-objects", type=int, default=1)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    path = generate_rec(Path(a.out), a.n, a.split, a.seed, a.min_objects, a.max_objects, name=a.name)
    print(path)


COMMANDS = {
    "train": (cmd_train, "GRPO training: vlmr1 train [config.yaml] [section.field=value ...]"),
    "sft": (cmd_sft, "supervised fine-tuning: vlmr1 sft [config.yaml] [section.field=value ...]"),
    "eval": (cmd_eval, "evaluate a checkpoint on REC data"),
    "data": (cmd_data, "generate synthetic task data"),
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
                print(f"  {name:<7}{doc}")
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
