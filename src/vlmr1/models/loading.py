"""Model loading: the family registry (``model_type`` -> adapter class), dtype and fine-tuning modes.

The adapter protocol (``adapter.py``) knows no family; the families import the protocol's helpers,
and only this module imports the families.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ModelFolderError
from . import finetune
from .folders import check_lora_folder, check_model_files, folder_model_type
from .adapter import VLMAdapter
from .internvl import INTERNVL_MODEL_TYPES, InternVLAdapter
from .qwen3_vl import QWEN3_MODEL_TYPES, Qwen3VLAdapter
from .qwen_vl import QWEN_MODEL_TYPES, QwenVLAdapter

ADAPTERS: dict[str, type] = {
    **{k: QwenVLAdapter for k in QWEN_MODEL_TYPES},
    **{k: Qwen3VLAdapter for k in QWEN3_MODEL_TYPES},
    **{k: InternVLAdapter for k in INTERNVL_MODEL_TYPES},
}
"""config.json ``model_type`` -> the adapter class that serves it."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def model_type(path: str | Path) -> str:
    """The checkpoint's ``model_type`` (config.json read and checked)."""
    return folder_model_type(path)


def load_adapter(path: str | Path, dtype: torch.dtype = torch.float32, **image_kwargs) -> VLMAdapter:
    """The adapter for the checkpoint at ``path``, chosen by its config's ``model_type``.

    ``image_kwargs`` set the image size where not None: ``min_pixels``/``max_pixels`` for the
    Qwen families, ``min_patches``/``max_patches`` (tiles) for InternVL; an adapter rejects
    options that do not apply to its family.
    """
    kind = model_type(path)
    if kind not in ADAPTERS:
        raise ModelFolderError(f"{Path(path) / 'config.json'}: model_type {kind!r} has no adapter (supported: {sorted(ADAPTERS)})")
    check_model_files(path)
    try:
        return ADAPTERS[kind].load(path, dtype=dtype, **image_kwargs)
    except OSError as e:  # a file transformers needs and the checks above do not know of
        raise ModelFolderError(f"{path}: transformers could not load it: {str(e).splitlines()[0]}") from e


def load_model(cfg, path, trainable: bool = True, fresh_lora: bool = False) -> VLMAdapter:
    """The adapter for ``path`` with the config's dtype, image size and fine-tuning modes.

    ``path`` is a full checkpoint or a LoRA checkpoint (adapter weights on a recorded base).
    ``fresh_lora`` adds new LoRA adapters (model.lora_rank > 0) to a full checkpoint: the start
    of a LoRA run.
    """
    m = cfg.model
    lora = finetune.is_lora_checkpoint(path)
    if lora:
        check_lora_folder(path)
    base = finetune.lora_base_path(path) if lora else path
    image = {"min_pixels": m.min_pixels, "max_pixels": m.max_pixels, "max_patches": m.max_patches}
    adapter = load_adapter(base, dtype=DTYPES[m.dtype], **image)  # unset (None) options are dropped
    if lora:
        finetune.load_lora(adapter, path, trainable)
    elif fresh_lora and m.lora_rank > 0:
        finetune.add_lora(adapter, m)
    finetune.apply_modes(adapter, m, trainable)
    return adapter


def merge_lora(path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a full checkpoint (base + LoRA merged) that plain ``from_pretrained`` loads (``vlmr1 export``)."""
    check_lora_folder(path)
    adapter = load_adapter(finetune.lora_base_path(path), dtype=dtype)
    finetune.load_lora(adapter, path, trainable=False)
    adapter.model = adapter.model.merge_and_unload()
    adapter.save(out_dir)
    return Path(out_dir)
