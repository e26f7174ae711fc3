"""The embedded default: the shipped tiny base checkpoint and the generated synthetic tasks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import EMBEDDED, Config
from .data.checks import RowChecker, long_prompts, prompt_limit
from .data.jsonl import TASK_METHODS, Sample, load_samples
from .errors import DataError, ModelFolderError
from .data.synthetic import GENERATORS

BASE_CHECKPOINT = Path(__file__).parent / "assets" / "base"
TINY_RANDOM = "tiny-random"  # model.path value: a freshly initialised tiny model (for SFT from scratch)
# Held-out sets use fixed seeds so every run, whatever its train.seed, is scored on the same samples.
EVAL_SEEDS = {"in": 1_000_003, "ood": 2_000_003}


@dataclass
class Data:
    train: list[Sample]
    evals: dict[str, list[Sample]]  # split name -> samples
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split ("train", eval names) -> reason -> rows skipped


def resolve_model_path(path: str, out: Path | None = None) -> Path:
    if path == EMBEDDED:
        if not (BASE_CHECKPOINT / "config.json").exists():
            raise ModelFolderError(f"{BASE_CHECKPOINT}: the embedded base checkpoint is missing; reinstall vlmr1 (see docs/base-checkpoint.md)")
        return BASE_CHECKPOINT
    if path == TINY_RANDOM:
        from .models.tiny import build_tiny

        if out is None:
            raise ValueError("model.path=tiny-random needs a run folder to build the model in")
        return build_tiny(out / "init")
    return Path(path)


def file_methods(methods: str | None, files: str, task: str) -> list[str | None]:
    """Per file, the accuracy method of its rows without one: ``methods`` (data.reward_methods,
    paired by position) or else the task's (REC: rec), else None (the "default" method)."""
    n = len(files.split(":"))
    return methods.split(":") if methods is not None else [TASK_METHODS.get(task)] * n


def _load(files: str, folders: str | None, on_error: str, check: RowChecker, methods: list[str | None] | None, skipped: dict, split: str) -> list[Sample]:
    samples, bad, reasons = load_samples(files, folders, on_error=on_error, reward_methods=methods, check=check)
    if bad:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
        print(f"warning: skipped {len(bad)} bad rows in {files} ({counts}; data.on_error=skip); first: {bad[0]}")
        skipped[split] = reasons
    return samples


def _synthetic(cfg: Config, root: Path, n: int, split: str, seed: int, name: str, train: bool, write: bool) -> Path:
    """Generate (or, on ranks that only read, locate) one split of the configured synthetic task."""
    path = root / f"{name}.jsonl"
    if not write:
        return path
    d = cfg.data
    kwargs: dict = {}
    if d.synthetic in ("rec", "det"):
        kwargs = {"min_objects": d.min_objects, "max_objects": d.max_objects}
    if d.synthetic == "rec" and train:  # held-out REC sets keep the generator's 16..40 px shapes
        kwargs.update(min_size=d.min_size, max_size=d.max_size)
    if d.synthetic == "rec" and d.distinct_kinds:
        kwargs["distinct_kinds"] = True
    return GENERATORS[d.synthetic](root, n, split, seed=seed, name=name, **kwargs)


def prepare_data(cfg: Config, out: Path, write: bool = True, scored_by: list[str] | tuple[str, ...] = ()) -> Data:
    """Training and held-out samples, every row checked (``data.checks``); embedded data is
    generated into ``out/data`` when ``write``.

    ``scored_by``: the rewards that score every training row (GRPO's reward.funcs; none for SFT):
    their ground-truth checks run on the training rows. In multi-process runs one process per
    machine writes (``write=True``) while the others wait and then only read the same files.
    """
    d = cfg.data
    root = out / "data"
    skipped: dict[str, dict[str, int]] = {}
    train_check, eval_check = RowChecker(d.max_image_pixels, scored_by), RowChecker(d.max_image_pixels)
    if d.train_files == EMBEDDED:
        train = _synthetic(cfg, root, d.num_train, "in", cfg.train.seed, "train", True, write)
        train_samples = _load(str(train), None, d.on_error, train_check, None, skipped, "train")
    else:
        methods = file_methods(d.reward_methods, d.train_files, d.task)
        train_samples = _load(d.train_files, d.image_folders, d.on_error, train_check, methods, skipped, "train")
    evals: dict[str, list[Sample]] = {}
    if d.eval_files is not None:
        files = d.eval_files.split(":")
        folders = d.eval_image_folders.split(":") if d.eval_image_folders else [None] * len(files)
        methods = file_methods(d.eval_reward_methods, d.eval_files, d.task)
        for f, folder, method in zip(files, folders, methods):
            evals[Path(f).stem] = _load(f, folder, d.on_error, eval_check, [method], skipped, Path(f).stem)
    elif d.train_files == EMBEDDED and d.num_eval > 0:
        for split, seed in EVAL_SEEDS.items():
            path = _synthetic(cfg, root, d.num_eval, split, seed, f"eval_{split}", False, write)
            evals[split] = _load(str(path), None, d.on_error, eval_check, None, skipped, split)
    return Data(train_samples, evals, skipped)


def hold_to_context(cfg: Config, adapter, data: Data, max_new_tokens: int) -> None:
    """Every prompt within ``data.max_prompt_length`` and the model's context less the tokens to
    generate: a longer one raises its DataError, or under ``data.on_error=skip`` is dropped and
    counted ("prompt too long" in ``data.skipped``). Needs the model's processor, so it runs once
    the model has loaded, before the first step; every rank drops the same rows."""
    limit, why = prompt_limit(adapter.model, cfg.data.max_prompt_length, max_new_tokens)
    if limit is None:
        return
    for split, samples in [("train", data.train), *data.evals.items()]:
        errors = long_prompts(adapter, samples, cfg.data.task, limit, why)
        if not errors:
            continue
        first = errors[0][1]
        if cfg.data.on_error == "raise":
            raise first
        bad = {id(s) for s, _ in errors}
        samples[:] = [s for s in samples if id(s) not in bad]
        if not samples:
            raise DataError(f"every {split} prompt is too long; first: {first}")
        data.skipped.setdefault(split, {})["prompt too long"] = len(errors)
        print(f"warning: skipped {len(errors)} {split} rows whose prompts are too long (data.on_error=skip); first: {first}")
