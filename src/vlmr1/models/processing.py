"""Loading a Qwen-VL processor with or without torchvision.

transformers' stock ``Qwen2_5_VLProcessor`` insists on a video processor, and every video
processor needs torchvision. The CPU build of torch this project pins for laptops has no
matching torchvision, so where torchvision is missing we build an image-only subclass of the
stock processor from the same saved files. It produces the same tensors for images (same
image processor, same token expansion, same ``mm_token_type_ids``); videos are rejected.
Where torchvision imports, the stock processor is used untouched.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil


def has_torchvision() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:  # a torchvision built for another torch is installed but fails to import
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "not usable"
        return False
    return True


class QwenImageOnlyProcessor(Qwen2_5_VLProcessor):
    """The stock Qwen2.5-VL processor minus its video processor (see module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        # Skip Qwen2_5_VLProcessor.__init__, which requires the video processor argument.
        super(Qwen2_5_VLProcessor, self).__init__(image_processor, tokenizer, chat_template=chat_template)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("videos need torchvision; this environment has only the image-only Qwen processor")
        return super().__call__(images=images, text=text, **kwargs)


def pixel_bounds(image_processor_cls, path: Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """The image processor saved at ``path``, with its pixel bounds replaced where given.

    transformers deprecates the ``min_pixels``/``max_pixels`` arguments: Qwen's image processors
    keep the bounds as ``size = {shortest_edge, longest_edge}`` (in pixels, not edges), so the
    given bounds go in there, the other one kept as saved."""
    ip = image_processor_cls.from_pretrained(path, local_files_only=True)
    if min_pixels is None and max_pixels is None:
        return ip
    size = {
        "shortest_edge": ip.size.shortest_edge if min_pixels is None else min_pixels,
        "longest_edge": ip.size.longest_edge if max_pixels is None else max_pixels,
    }
    return image_processor_cls.from_pretrained(path, local_files_only=True, size=size)


def load_qwen_processor(path: str | Path, min_pixels: int | None = None, max_pixels: int | None = None):
    """The stock processor when torchvision works, else the image-only one from the same files;
    ``min_pixels`` / ``max_pixels`` (None: as saved) bound the resized image's area."""
    path = Path(path)
    if has_torchvision():
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        processor.image_processor = pixel_bounds(type(processor.image_processor), path, min_pixels, max_pixels)
        return processor
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = pixel_bounds(Qwen2VLImageProcessorPil, path, min_pixels, max_pixels)
    chat_template = None
    template_file = path / "chat_template.jinja"
    if template_file.exists():
        chat_template = template_file.read_text()
    elif (path / "chat_template.json").exists():
        chat_template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    return QwenImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


LOADING_ONLY_KEYS = ("is_local", "local_files_only")
"""tokenizer_config.json entries transformers records from how the tokenizer was loaded, not what it is."""


def hub_layout(out_dir: str | Path) -> None:
    """Rewrite a saved processor into the layout of Hub checkpoints, which other readers
    (transformers 4.x, vLLM, the Hub viewer) expect: the image processor in
    ``preprocessor_config.json`` (transformers 5 nests it in ``processor_config.json``), and a
    ``tokenizer_config.json`` without the loading flags transformers leaks into it."""
    out_dir = Path(out_dir)
    proc_file = out_dir / "processor_config.json"
    if proc_file.exists():
        proc = json.loads(proc_file.read_text())
        image = proc.pop("image_processor", None)
        if image is not None:
            if proc.get("processor_class"):
                image.setdefault("processor_class", proc["processor_class"])
            (out_dir / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
        if set(proc) <= {"processor_class"}:  # nothing else in it: the Hub layout has no such file
            proc_file.unlink()
        else:
            proc_file.write_text(json.dumps(proc, indent=2))
    tok_file = out_dir / "tokenizer_config.json"
    if tok_file.exists():
        tok = json.loads(tok_file.read_text())
        tok_file.write_text(json.dumps({k: v for k, v in tok.items() if k not in LOADING_ONLY_KEYS}, indent=2))


def save_qwen_processor(processor, out_dir: str | Path) -> None:
    """Save so that the folder loads with the *stock* processor wherever torchvision is present.

    The image-only subclass would record its own class name; GPU users with torchvision should
    get ``Qwen2_5_VLProcessor`` and a video processor (with Qwen's defaults) instead.
    """
    out_dir = Path(out_dir)
    processor.save_pretrained(out_dir)
    hub_layout(out_dir)
    if not isinstance(processor, QwenImageOnlyProcessor):
        return
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        file = out_dir / name
        if file.exists():
            data = json.loads(file.read_text())
            if data.get("processor_class"):
                data["processor_class"] = "Qwen2_5_VLProcessor"
            file.write_text(json.dumps(data, indent=2))
    ip = processor.image_processor
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
        # Qwen's image processors keep the pixel bounds as size = {shortest_edge, longest_edge}.
        "size": {"shortest_edge": ip.size.shortest_edge, "longest_edge": ip.size.longest_edge},
        "processor_class": "Qwen2_5_VLProcessor",
    }
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
