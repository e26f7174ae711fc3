"""Checks of a model or checkpoint folder before transformers reads it, so that a broken folder
is answered with the file at fault and what to do, not a deep traceback.

What a full checkpoint needs: ``config.json`` (valid JSON with a ``model_type``), safetensors
weights (``model.safetensors``, or an index and every shard it names, each file complete), and
the tokenizer and image-processor files. A LoRA checkpoint needs ``adapter_config.json`` and
``adapter_model.safetensors``. Pickled weights (``*.bin``) are refused: loading a pickle can run
code, and vlmr1 never does that by default.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from ..errors import ModelFolderError

INDEX = "model.safetensors.index.json"


def read_json(file: Path, what: str) -> dict:
    """A JSON object from ``file``; ModelFolderError naming it if it is missing or corrupt."""
    if not file.is_file():
        raise ModelFolderError(f"{file}: not found; {what}")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelFolderError(f"{file}: not UTF-8 text; the file is corrupt: copy it again") from None
    except json.JSONDecodeError as e:
        raise ModelFolderError(f"{file}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); copy it again") from None
    if not isinstance(data, dict):
        raise ModelFolderError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def check_safetensors(file: Path) -> None:
    """A complete safetensors file: its header parses and every tensor's bytes are present."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if n is None or 8 + n > size:
            raise ModelFolderError(f"{file}: truncated or not a safetensors file ({size:,} bytes); copy it again")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ModelFolderError(f"{file}: corrupt safetensors header; copy it again") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    need = 8 + n + max(ends, default=0)
    if size < need:
        raise ModelFolderError(f"{file}: truncated: {size:,} of its {need:,} bytes; the copy or download did not finish")


def check_weights(path: Path) -> None:
    """Safetensors weights present and complete (single file or index + shards)."""
    single, index = path / "model.safetensors", path / INDEX
    if single.is_file():
        return check_safetensors(single)
    if index.is_file():
        shards = sorted(set(read_json(index, "").get("weight_map", {}).values()))
        if not shards:
            raise ModelFolderError(f"{index}: names no weight files (its weight_map is empty)")
        for shard in shards:
            if not (path / shard).is_file():
                raise ModelFolderError(f"{path / shard}: not found, but {INDEX} names it; the folder is incomplete")
            check_safetensors(path / shard)
        return
    pickles = sorted(p.name for p in path.glob("*.bin"))
    if pickles:
        raise ModelFolderError(
            f"{path}: weights only as pickles ({', '.join(pickles)}), which vlmr1 does not load; convert them to "
            "safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    raise ModelFolderError(f"{path}: no weights (model.safetensors or {INDEX}); is this the right folder?")


def check_processor_files(path: Path) -> None:
    """The tokenizer and image-processor files a processor is built from."""
    if not ((path / "tokenizer.json").is_file() or (path / "vocab.json").is_file()):
        raise ModelFolderError(f"{path}: no tokenizer (tokenizer.json, or vocab.json and merges.txt); copy the base model's tokenizer files in")
    if not any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise ModelFolderError(f"{path}: no image processor config (preprocessor_config.json); copy the base model's in")
    for name in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        if (path / name).is_file():
            read_json(path / name, "")


def folder_model_type(path: str | Path) -> str:
    """The ``model_type`` in a checkpoint folder's config.json (the folder and file checked)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"{path}: no such folder; the model must be a local HF checkpoint folder (nothing is downloaded)")
    config = read_json(path / "config.json", "a model folder holds config.json, safetensors weights and the processor files")
    kind = config.get("model_type")
    if not isinstance(kind, str) or not kind:
        raise ModelFolderError(f"{path / 'config.json'}: no model_type; is this a transformers model config?")
    return kind


def check_model_files(path: str | Path) -> None:
    """The weights and processor files of a full checkpoint, checked before transformers reads them."""
    check_weights(Path(path))
    check_processor_files(Path(path))


def check_lora_folder(path: str | Path) -> None:
    """A LoRA checkpoint: its adapter config and complete adapter weights."""
    path = Path(path)
    read_json(path / "adapter_config.json", "")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise ModelFolderError(f"{weights}: not found; a LoRA checkpoint holds adapter_config.json and adapter_model.safetensors")
    check_safetensors(weights)
