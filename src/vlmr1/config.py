"""Configuration: nested dataclasses hold every default; YAML and ``a.b=value`` override them.

Every field is honoured by the code or rejected here by ``validate`` before a model loads;
nothing a user sets is silently ignored.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .data.jsonl import OnError
from .data.synthetic import SyntheticTask
from .rl.algos import AdvantageScale, ImportanceLevel, KLEstimator, LossAggregation

EMBEDDED = "embedded"  # the shipped tiny base checkpoint / the generated synthetic REC task

# Settings that take one of a few names are Literal types; ``validate`` checks every such field.
DType = Literal["float32", "bfloat16", "float16"]
Engine = Literal["hf", "vllm"]
LRSchedule = Literal["constant", "cosine", "linear"]


@dataclass
class ModelConfig:
    path: str = EMBEDDED
    """HF checkpoint directory, or "embedded" for the tiny Qwen2.5-VL base that ships with vlmr1."""
    dtype: DType = "float32"
    """Parameter dtype: float32 | bfloat16 | float16."""
    min_pixels: int | None = None
    """Qwen image processor: smallest image area after resize (None keeps the checkpoint's)."""
    max_pixels: int | None = None
    """Qwen image processor: largest image area after resize (None keeps the checkpoint's)."""
    max_patches: int | None = None
    """InternVL image processor: most tiles per image (None keeps the checkpoint's); Qwen models reject it."""
    freeze_vision: bool = False
    """Keep the vision encoder's parameters fixed (the projector is model.freeze_projector)."""
    freeze_projector: bool = False
    """Keep the vision-to-language projector (Qwen's merger) fixed."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    lora_rank: int = 0
    """LoRA rank r (0: full fine-tuning). The reference model is then the base with adapters off."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (updates are scaled by alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names (peft matching: exact or name suffix) that get LoRA adapters, used as given."""
    lora_vision: bool = False
    """Also put LoRA on matching modules of the vision tower and projector (excluded by default)."""


@dataclass
class DataConfig:
    train_files: str = EMBEDDED
    """Colon-separated VLM-R1 JSONL files, or "embedded" to generate the synthetic REC task."""
    image_folders: str | None = None
    """Colon-separated image folders paired with train_files by position (None: relative to each file)."""
    eval_files: str | None = None
    """Colon-separated held-out JSONL files, evaluated before and after training (each its own split)."""
    eval_image_folders: str | None = None
    """Image folders for eval_files, paired by position."""
    task: str = "rec"
    """Question template applied to each prompt (see vlmr1.data.jsonl.QUESTION_TEMPLATES)."""
    synthetic: SyntheticTask = "rec"
    """Embedded data only: which generated task, rec | det | count | gui (see vlmr1 data --help)."""
    on_error: OnError = "raise"
    """Bad data rows: "raise" stops with file:line:field; "skip" skips each with a counted warning."""
    num_train: int = 4000
    """Embedded data only: number of generated training samples."""
    num_eval: int = 1000
    """Embedded data only: samples per held-out split (in-domain and out-of-domain)."""
    min_objects: int = 2
    """Embedded data only: fewest shapes per generated training image."""
    max_objects: int = 4
    """Embedded data only: most shapes per generated training image."""
    min_size: int = 16
    """Embedded data only: smallest shape side in pixels (training data; held-out sets keep 16..40)."""
    max_size: int = 40
    """Embedded data only: largest shape side in pixels (training data; held-out sets keep 16..40)."""


@dataclass
class RolloutConfig:
    group_size: int = 8
    """G: completions sampled per prompt."""
    max_completion_length: int = 24
    """Most new tokens per completion."""
    temperature: float = 0.7
    """Sampling temperature (also applied to the log-probs, so ratios refer to the sampling policy)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    repetition_penalty: float = 1.0
    """HF repetition penalty (1.0 = off)."""
    engine: Engine = "hf"
    """What samples rollouts: hf (HF generate on the policy) | vllm (vLLM colocated on the training
    GPU, weights synced after each step; GPU only, pip install 'vlmr1[vllm]', see docs/vllm.md)."""


@dataclass
class AlgoConfig:
    beta: float = 0.04
    """KL coefficient; 0 loads no reference model."""
    kl_estimator: KLEstimator = "k3"
    """k1 | k2 | k3 (Schulman's estimators of KL(policy || reference))."""
    eps_low: float = 0.2
    """PPO clip below 1."""
    eps_high: float = 0.2
    """PPO clip above 1 (DAPO's clip-higher uses e.g. 0.28)."""
    loss_aggregation: LossAggregation = "grpo"
    """grpo (per-sequence mean) | bnpo (local token mean) | dr_grpo (constant divisor) | dapo (global token mean)."""
    advantage_scale: AdvantageScale = "group"
    """Divide advantages by the std of the group | batch | none (Dr. GRPO)."""
    num_iterations: int = 1
    """mu: optimizer passes over each rollout batch (>1 stores old log-probs)."""
    importance_level: ImportanceLevel = "token"
    """token (GRPO) | sequence (GSPO)."""
    filter_zero_std: bool = False
    """Drop groups whose rewards are all equal from the update (they carry no advantage)."""


@dataclass
class RewardConfig:
    funcs: list[str] = field(default_factory=lambda: ["acc50_tight", "iou", "box_format"])
    """Registered reward names or path/to/file.py:function."""
    weights: list[float] | None = field(default_factory=lambda: [1.0, 0.5, 0.1])
    """One weight per reward (None: all 1)."""
    model_rewards: bool = True
    """Use the variant of a reward that the model adapter offers for it (adapter.reward_overrides), if any."""
    eval_format: str | None = "box_format"
    """Registered reward also reported as format_rate by evaluation (e.g. "format" for <think>/<answer>; null: none)."""


@dataclass
class TrainConfig:
    output_dir: str | None = None
    """Run folder (None: a fresh runs/<time> folder)."""
    seed: int = 0
    """Seeds data order, sampling and initialisation."""
    steps: int = 220
    """GRPO: rollout steps (each followed by algo.num_iterations optimizer updates); SFT: batches."""
    prompts_per_step: int = 16
    """Prompts per rollout per process (GRPO); samples per batch per process (SFT)."""
    micro_batch_size: int = 64
    """Sequences per forward/backward (gradient accumulation over the rest)."""
    shared_prompt: bool = True
    """GRPO rollouts and log-probs: encode each prompt once per group and let its G completions
    attend to it (exact: same samples, same log-probs to fp32 rounding; false repeats the prompt
    G times). Off under model.gradient_checkpointing, which drops the prompt's KV cache."""
    lr: float = 1e-4
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_schedule: LRSchedule = "constant"
    """constant | cosine | linear (decay to 0 at the last step, after warm-up)."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    log_every: int = 1
    """Steps between metric lines."""
    save_every: int = 0
    """Steps between checkpoints (0: only the final one)."""
    keep_last: int = 0
    """Keep only the newest N checkpoints (0: keep all); old ones go only after a new one is complete."""
    max_nonfinite_steps: int = 3
    """A NaN/inf loss or gradient skips that optimizer step; one more than this many in a row stops the run."""
    eval_every: int = 0
    """Steps between held-out evaluations logged to metrics (0: none during training)."""
    eval_before: bool = True
    """Evaluate the held-out splits before training."""
    eval_after: bool = True
    """Evaluate the held-out splits after training."""
    eval_batch_size: int = 64
    """Prompts per batch in evaluation."""
    resume: str | None = None
    """Checkpoint folder to resume from, or "auto" for the newest in output_dir."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(ValueError):
    pass


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


def _apply(cfg: Config, key: str, value: Any) -> None:
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
    setattr(section, name, _coerce(value, hints[name], key))


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file's values, then ``key=value`` overrides (values parsed as YAML)."""
    cfg = Config()
    if yaml_path is not None:
        data = yaml.safe_load(Path(yaml_path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of sections")
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{yaml_path}: section {section!r} must be a mapping")
            for name, value in values.items():
                _apply(cfg, f"{section}.{name}", value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _apply(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
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
    r, a, t = cfg.rollout, cfg.algo, cfg.train
    checks = [
        (r.group_size >= 2, "rollout.group_size must be >= 2: group advantages need at least two samples"),
        (r.max_completion_length >= 1, "rollout.max_completion_length must be >= 1"),
        (r.temperature > 0, "rollout.temperature must be > 0 (GRPO samples; use `vlmr1 eval` for greedy decoding)"),
        (0 < r.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (r.top_k >= 0, "rollout.top_k must be >= 0 (0 = off)"),
        (r.repetition_penalty > 0, "rollout.repetition_penalty must be > 0"),
        (a.beta >= 0, "algo.beta must be >= 0"),
        (a.eps_low >= 0 and a.eps_high >= 0, "algo.eps_low and algo.eps_high must be >= 0"),
        (a.eps_low < 1, "algo.eps_low must be < 1 (the clip range is [1 - eps_low, 1 + eps_high])"),
        (a.num_iterations >= 1, "algo.num_iterations must be >= 1"),
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
        (t.log_every >= 1, "train.log_every must be >= 1"),
        (cfg.model.lora_rank >= 0, "model.lora_rank must be >= 0 (0 = full fine-tuning)"),
        (cfg.model.lora_alpha > 0, "model.lora_alpha must be > 0"),
        (0 <= cfg.model.lora_dropout < 1, "model.lora_dropout must be in [0, 1)"),
        (cfg.model.lora_rank == 0 or bool(cfg.model.lora_target_modules), "model.lora_target_modules is empty"),
        (cfg.data.num_eval >= 0 and cfg.data.num_train >= 1, "data.num_train must be >= 1 and data.num_eval >= 0"),
        (1 <= cfg.data.min_objects <= cfg.data.max_objects, "data.min_objects must be in [1, data.max_objects]"),
        (4 <= cfg.data.min_size <= cfg.data.max_size <= 56, "data.min_size..max_size must lie in [4, 56] pixels"),
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
    from .rewards import get_reward  # resolving names here turns a typo into an error before any model loads

    for name in [*cfg.reward.funcs, *([cfg.reward.eval_format] if cfg.reward.eval_format else [])]:
        try:
            get_reward(name)
        except (ValueError, FileNotFoundError, AttributeError, TypeError, ImportError, SyntaxError) as e:
            raise ConfigError(f"reward {name!r}: {e}") from None
    from .data.jsonl import QUESTION_TEMPLATES

    if cfg.data.task not in QUESTION_TEMPLATES:
        raise ConfigError(f"data.task={cfg.data.task!r}: no such question template (known: {sorted(QUESTION_TEMPLATES)})")
    if (cfg.data.eval_image_folders is not None) and cfg.data.eval_files is None:
        raise ConfigError("data.eval_image_folders is set but data.eval_files is not")
    if r.engine == "vllm":
        _validate_vllm(cfg)


def _validate_vllm(cfg: Config) -> None:
    """What the vLLM rollout engine needs; sharded weights (ZeRO-3 / FSDP) are rejected when the
    trainer sees the accelerate setup, and unsupported model families when the engine is built."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "rollout.engine=vllm needs a CUDA GPU (vLLM runs on the training GPU), and torch sees none here; "
            "use rollout.engine=hf"
        )
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("rollout.engine=vllm: vllm is not installed (pip install 'vlmr1[vllm]', GPU only)")
    if cfg.rollout.temperature > 2:
        raise ConfigError(f"rollout.temperature={cfg.rollout.temperature}: vLLM accepts temperatures up to 2 (rollout.engine=vllm)")
    if cfg.model.max_patches is not None:
        raise ConfigError("model.max_patches is an InternVL option; rollout.engine=vllm serves the Qwen-VL families only")


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
