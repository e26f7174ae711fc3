"""The config checks that leave nothing silently ignored: every number finite, every path list
well formed, and no setting given where the setting it depends on is off.

``validate`` (config.py) runs these after its range checks; each raises ConfigError naming the
setting and what would be right.
"""

from __future__ import annotations

import dataclasses
import math

from .config_fields import EMBEDDED, Config, DataConfig
from .errors import ConfigError


def check_finite(cfg: Config) -> None:
    """Every float setting (and every float in a list setting) is a finite number."""
    for section in dataclasses.fields(cfg):
        for name, value in vars(getattr(cfg, section.name)).items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                if isinstance(v, float) and not math.isfinite(v):
                    raise ConfigError(f"{section.name}.{name}={value}: expected a finite number")


PATH_LISTS = ("train_files", "image_folders", "eval_files", "eval_image_folders", "reward_methods", "eval_reward_methods")


def check_paths(d: DataConfig) -> None:
    """Colon-separated lists without empty entries, folder lists as long as their file lists."""
    for name in PATH_LISTS:
        value = getattr(d, name)
        if value is None:
            continue
        parts = value.split(":")
        if any(not p.strip() for p in parts):
            k = next(i for i, p in enumerate(parts, 1) if not p.strip())
            raise ConfigError(
                f"data.{name}={value!r}: entry {k} of {len(parts)} is empty; give colon-separated entries "
                "without a leading, trailing or doubled ':' (e.g. a.jsonl:b.jsonl)"
            )
    for folders, files in (("image_folders", "train_files"), ("eval_image_folders", "eval_files")):
        f, g = getattr(d, folders), getattr(d, files)
        if f is not None and g is not None and g != EMBEDDED and len(f.split(":")) != len(g.split(":")):
            raise ConfigError(
                f"data.{folders} has {len(f.split(':'))} entries for {len(g.split(':'))} data.{files}; "
                "they pair by position, so give one folder per file"
            )


def has_eval_data(cfg: Config) -> bool:
    d = cfg.data
    return d.eval_files is not None or (d.train_files == EMBEDDED and d.num_eval > 0)


# (settings, the condition under which they apply, what that condition is in words)
_DEPENDENT = [
    (("model.lora_vision", "model.lora_alpha", "model.lora_dropout", "model.lora_target_modules"),
     lambda c: c.model.lora_rank > 0, "LoRA (model.lora_rank > 0)"),
    (("algo.kl_estimator",), lambda c: c.algo.beta > 0, "a KL penalty (algo.beta > 0)"),
    (("data.synthetic", "data.num_train", "data.min_objects", "data.max_objects", "data.min_size", "data.max_size",
      "data.distinct_kinds"),
     lambda c: c.data.train_files == EMBEDDED, "the embedded data (data.train_files=embedded)"),
    (("data.num_eval",), lambda c: c.data.train_files == EMBEDDED and c.data.eval_files is None,
     "the embedded held-out splits (embedded data.train_files and no data.eval_files)"),
    (("data.image_folders",), lambda c: c.data.train_files != EMBEDDED, "your own data.train_files"),
    (("train.keep_last",), lambda c: c.train.save_every > 0, "periodic checkpoints (train.save_every > 0)"),
    (("train.log_completions_groups",), lambda c: c.train.log_completions > 0, "train.log_completions > 0"),
    (("algo.rollout_is", "algo.rollout_mask_threshold", "rollout.sync_check_every"), lambda c: c.rollout.engine == "vllm",
     "a sampler other than the policy (rollout.engine=vllm), whose own log-probs it needs"),
    (("algo.rollout_is_cap",), lambda c: c.algo.rollout_is != "none", "rollout importance sampling (algo.rollout_is=token or sequence)"),
    (("train.eval_every", "train.eval_batch_size"), has_eval_data,
     "held-out data (data.eval_files, or the embedded data with data.num_eval > 0)"),
]


def _get(cfg: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def check_applies(cfg: Config) -> None:
    """A setting changed from its default while what it depends on is off is an error, not a no-op."""
    default = Config()
    for keys, applies, condition in _DEPENDENT:
        changed = [k for k in keys if _get(cfg, k) != _get(default, k)]
        if changed and not applies(cfg):
            raise ConfigError(f"{changed[0]}={_get(cfg, changed[0])!r} applies only with {condition}; remove it or enable that")
    m, t = cfg.model, cfg.train
    if m.min_pixels is not None and m.max_pixels is not None and m.min_pixels > m.max_pixels:
        raise ConfigError(f"model.min_pixels={m.min_pixels} is above model.max_pixels={m.max_pixels}")
    if t.resume == "auto" and t.output_dir is None:
        raise ConfigError("train.resume=auto resumes the newest checkpoint in train.output_dir; set train.output_dir to the run's folder")


def check_report_to(report_to: list[str]) -> None:
    """Known trackers, "none" alone, and the optional ones installed."""
    import importlib.util

    from .metrics import TRACKERS

    unknown = [t for t in report_to if t not in (*TRACKERS, "none")]
    if unknown:
        raise ConfigError(f"train.report_to: unknown tracker {unknown[0]!r} (known: {list(TRACKERS)}, or none)")
    if "none" in report_to and len(report_to) > 1:
        raise ConfigError(f"train.report_to={report_to}: 'none' cannot be combined with trackers")
    for tracker in ("wandb", "mlflow"):
        if tracker in report_to and importlib.util.find_spec(tracker) is None:
            raise ConfigError(f"train.report_to: {tracker} is not installed (pip install 'vlmr1[{tracker}]')")
