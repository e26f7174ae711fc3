"""Fine-tuning modes, all from ``model.*`` config: full, LoRA (peft), frozen vision tower and/or
projector, gradient checkpointing; and adding and loading LoRA adapters (``loading.merge_lora`` exports them merged).

Which parameters form the vision tower and the projector is the adapter's business
(``vision_prefix`` / ``projector_prefix``, parameter-name prefixes of the HF model); this module
only applies the modes, so it works for every model family.

LoRA checkpoints hold the adapter weights only (``adapter_config.json`` +
``adapter_model.safetensors`` + the processor); the base model is read from the path peft records
in ``base_model_name_or_path``. The reference model of a LoRA run is the same module with its
adapters disabled, so no second copy of the weights is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelFolderError
from .folders import read_json

LORA_CONFIG = "adapter_config.json"

# peft wraps the HF model as PeftModel.base_model (LoraModel).model, prefixing every name.
_PEFT_PREFIX = "base_model.model."


def is_peft(model) -> bool:
    """Whether ``model`` carries peft adapters (then ``disable_adapter()`` gives the base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def is_lora_checkpoint(path: str | Path) -> bool:
    return (Path(path) / LORA_CONFIG).exists()


def lora_base_path(path: str | Path) -> Path:
    """The base model a LoRA checkpoint was trained on (as peft recorded it)."""
    base = read_json(Path(path) / LORA_CONFIG, "").get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ModelFolderError(f"{path}/{LORA_CONFIG}: base model {base!r} is not a local folder; put the base model there or edit base_model_name_or_path")
    return Path(base)


def _hf_name(name: str) -> str:
    return name[len(_PEFT_PREFIX) :] if name.startswith(_PEFT_PREFIX) else name


def vision_tower_parameters(adapter) -> list[torch.nn.Parameter]:
    """Parameters of the vision encoder, projector excluded (LoRA weights inside it included)."""
    return [
        p
        for n, p in adapter.model.named_parameters()
        if _hf_name(n).startswith(adapter.vision_prefix) and not _hf_name(n).startswith(adapter.projector_prefix)
    ]


def projector_parameters(adapter) -> list[torch.nn.Parameter]:
    """Parameters of the vision-to-language projector (Qwen's merger, InternVL's MLP)."""
    return [p for n, p in adapter.model.named_parameters() if _hf_name(n).startswith(adapter.projector_prefix)]


def _vision_module_names(adapter) -> list[str]:
    """Modules of the vision tower and projector(s): InternVL's projector sits outside the tower."""
    proj = adapter.projector_prefix if isinstance(adapter.projector_prefix, tuple) else (adapter.projector_prefix,)
    prefixes = tuple(p.rstrip(".") for p in (adapter.vision_prefix, *proj))
    return [n for n, _ in adapter.model.named_modules() if n.startswith(prefixes)]


def add_lora(adapter, m) -> None:
    """Wrap ``adapter.model`` with LoRA adapters on ``m.lora_target_modules`` (names as given).

    Modules of the vision tower and projector are excluded unless ``m.lora_vision``: LoRA on
    the language model is the usual recipe, and a target like ``qkv`` would otherwise silently
    reach into the vision blocks too.
    """
    from peft import LoraConfig, get_peft_model

    exclude = None if m.lora_vision else _vision_module_names(adapter)
    config = LoraConfig(
        r=m.lora_rank,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=list(m.lora_target_modules),
        exclude_modules=exclude,
    )
    adapter.model = get_peft_model(adapter.model, config)


def load_lora(adapter, path: str | Path, trainable: bool) -> None:
    """Put the LoRA weights saved at ``path`` on ``adapter.model`` (the base model)."""
    from peft import PeftModel

    adapter.model = PeftModel.from_pretrained(adapter.model, str(path), is_trainable=trainable)


def apply_modes(adapter, m, trainable: bool) -> None:
    """Freeze what the config freezes, and turn on gradient checkpointing."""
    if not trainable:
        adapter.model.eval().requires_grad_(False)
        return
    frozen = (vision_tower_parameters(adapter) if m.freeze_vision else []) + (
        projector_parameters(adapter) if m.freeze_projector else []
    )
    for p in frozen:
        p.requires_grad_(False)
    if m.gradient_checkpointing:
        # Non-reentrant checkpointing: correct with frozen inputs (LoRA, frozen vision) without
        # the enable_input_require_grads workaround the reentrant variant needs.
        adapter.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
