"""Adapter for Qwen3-VL (``Qwen3VLForConditionalGeneration``), a small extension of the Qwen2.5-VL one.

What differs from Qwen2.5-VL, and what it means here:

- Inputs are the same kind: pixel patches, ``image_grid_thw`` and ``mm_token_type_ids``, so
  encoding, repeat/slice and ``sequence_inputs`` are inherited unchanged.
- Patches are 16 px (not 14): one image token covers 32 x 32 px after the 2 x 2 merge, and
  ``input_sizes`` (grid x patch size) are multiples of 32.
- Positions: interleaved M-RoPE, which the model builds from ``mm_token_type_ids`` and the image
  grids on every full forward (each image advances the text position by max(h, w) of its merged
  grid). Qwen3-VL raises without ``mm_token_type_ids``, where Qwen2.5-VL silently fell back to
  1-D positions; the inherited ``sequence_inputs`` always passes them.
- DeepStack: features of some vision layers are merged (``deepstack_merger_list``) and added to
  the first text layers; those mergers project vision into the language model, so they count as
  projector parameters next to the final merger.
- Processor: ``Qwen3VLProcessor`` adds video timestamps; for images it yields the same tensors.
  Its video processor needs torchvision, so without torchvision an image-only subclass is built
  from the same files (as ``processing.py`` does for Qwen2.5-VL) and saved under the stock name.
- Boxes: Qwen3-VL answers grounding in a 0-1000 frame normalised to the image, not in pixels of
  the resized input as Qwen2.5-VL: ``box_frame`` is "norm1000" (inherited), and rewards map
  answers from that frame to the original image.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import Qwen3VLProcessor

from .processing import QwenImageOnlyProcessor, hub_layout, load_qwen_processor
from .qwen_vl import QwenVLAdapter, name_processor_class

QWEN3_MODEL_TYPES = {"qwen3_vl"}


class Qwen3ImageOnlyProcessor(Qwen3VLProcessor):
    """The stock Qwen3-VL processor without its video processor (see module docstring)."""

    @classmethod
    def get_attributes(cls):
        # ProcessorMixin takes its sub-processors from this list: leaving the video processor out
        # lets the stock __init__ run unchanged with video_processor=None.
        return ["image_processor", "tokenizer"]

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("videos need torchvision; this environment has only the image-only Qwen3-VL processor")
        return super().__call__(images=images, text=text, **kwargs)


def load_qwen3_processor(path: str | Path, **image_kwargs):
    """The stock processor when torchvision works, else the image-only one from the same files."""
    processor = load_qwen_processor(path, **image_kwargs)
    if isinstance(processor, QwenImageOnlyProcessor):  # no torchvision: same parts, Qwen3's class
        processor = Qwen3ImageOnlyProcessor(processor.image_processor, processor.tokenizer, chat_template=processor.chat_template)
    return processor


def save_qwen3_processor(processor, out_dir: str | Path) -> None:
    """Save so that the folder loads with the stock ``Qwen3VLProcessor`` wherever torchvision is present."""
    out_dir = Path(out_dir)
    processor.save_pretrained(out_dir)
    hub_layout(out_dir)
    if not isinstance(processor, Qwen3ImageOnlyProcessor):
        return
    name_processor_class(out_dir, "Qwen3VLProcessor")
    ip = processor.image_processor
    # Frame size and sampling keep Qwen3VLVideoProcessor's own defaults; the patching must match the model.
    video = {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "patch_size": ip.patch_size,
        "temporal_patch_size": ip.temporal_patch_size,
        "merge_size": ip.merge_size,
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "processor_class": "Qwen3VLProcessor",
    }
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


class Qwen3VLAdapter(QwenVLAdapter):
    reward_overrides: dict[str, str] = {}
    vision_prefix = "model.visual."
    # The final merger and the DeepStack mergers all project vision features into the LM.
    projector_prefix = ("model.visual.merger.", "model.visual.deepstack_merger_list.")

    @staticmethod
    def load_processor(path: str | Path, **image_kwargs):
        return load_qwen3_processor(path, **image_kwargs)

    def save(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir)
        save_qwen3_processor(self.processor, out_dir)
