"""Adapter for the Qwen-VL family (Qwen2-VL, Qwen2.5-VL) through transformers' own classes.

Qwen2-VL and Qwen2.5-VL take the same inputs (pixel patches, ``image_grid_thw`` and
``mm_token_type_ids`` for the 3-D rotary positions), so one adapter serves both; only the model
class (chosen by transformers from config.json) and the saved processor class differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from ..errors import ConfigError
from .adapter import PromptBatch, encode_answers, stop_token_ids, user_content
from .processing import QwenImageOnlyProcessor, load_qwen_processor, save_qwen_processor

QWEN_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl"}
# The stock processor of each model type, named in saved folders so that where torchvision is
# present AutoProcessor builds the family's own processor (and video processor).
STOCK_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}


def name_processor_class(out_dir: str | Path, name: str) -> None:
    """Record ``name`` as ``processor_class`` in the processor files saved in ``out_dir``.

    Image-only processors (built where torchvision is missing) would record their own class name,
    which no other installation can load.
    """
    for file in Path(out_dir).glob("*.json"):
        data = json.loads(file.read_text())
        if isinstance(data, dict) and data.get("processor_class"):
            data["processor_class"] = name
            file.write_text(json.dumps(data, indent=2))


def save_qwen2_processor(processor, out_dir: str | Path) -> None:
    """``save_qwen_processor`` for a Qwen2-VL checkpoint: the same files, naming ``Qwen2VLProcessor``."""
    save_qwen_processor(processor, out_dir)
    if isinstance(processor, QwenImageOnlyProcessor):
        name_processor_class(out_dir, STOCK_PROCESSORS["qwen2_vl"])


class QwenVLAdapter:
    # Qwen2/2.5-VL answer in the conventions the generic rewards score (absolute pixels of the
    # resized input), so the family needs no reward variants.
    reward_overrides: dict[str, str] = {}
    vision_prefix = "model.visual."  # vision tower, projector included (parameter-name prefix)
    projector_prefix = "model.visual.merger."  # the patch merger that projects into the LM

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.patch_size = processor.image_processor.patch_size

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, **image_kwargs) -> "QwenVLAdapter":
        image_kwargs = {k: v for k, v in image_kwargs.items() if v is not None}
        unknown = sorted(set(image_kwargs) - {"min_pixels", "max_pixels"})
        if unknown:
            raise ConfigError(f"{path}: Qwen-VL sizes images in pixels; model.{unknown[0]} applies to InternVL only (use model.min_pixels/max_pixels)")
        processor = cls.load_processor(path, **image_kwargs)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
        return cls(model, processor)

    @staticmethod
    def load_processor(path: str | Path, **image_kwargs):
        return load_qwen_processor(path, **image_kwargs)

    @property
    def eos_token_ids(self) -> list[int]:
        return stop_token_ids(self.model, self.tokenizer)

    @property
    def box_frame(self) -> str:
        # Qwen2.5-VL grounds in absolute pixels of its resized input; Qwen2-VL (and Qwen3-VL,
        # which subclasses this adapter) in a 0-1000 frame normalised to the image.
        return "input" if self.model.config.model_type == "qwen2_5_vl" else "norm1000"

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Vision placeholder and delimiter tokens: never part of a completion."""
        c = self.model.config
        return [c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id]

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def messages(self, problem: str, n_images: int) -> list[dict]:
        return [{"role": "user", "content": user_content(problem, n_images)}]

    def prompt_text(self, problem: str, n_images: int) -> str:
        """The chat-templated prompt, image placeholders unexpanded (what the processor, or vLLM, expands)."""
        return self.processor.apply_chat_template(self.messages(problem, n_images), add_generation_prompt=True, tokenize=False)

    def prompt_lengths(self, problems: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
        """Text tokens of the templated prompt, each ``<|image_pad|>`` counted as the image's tokens:
        its patches after Qwen's resize over the merge (what the processor expands it to)."""
        ip = self.processor.image_processor
        texts = [self.prompt_text(p, len(sizes)) for p, sizes in zip(problems, image_sizes)]
        ids = self.tokenizer(texts, verbose=False)["input_ids"]  # too long is for the caller to say

        def image_tokens(w: int, h: int) -> int:
            return ip.get_number_of_image_patches(h, w, {}) // ip.merge_size**2

        return [len(t) + sum(image_tokens(w, h) - 1 for w, h in sizes) for t, sizes in zip(ids, image_sizes)]

    def encode_prompts(self, problems: list[str], images: list[list[Image.Image]]) -> PromptBatch:
        texts = [self.prompt_text(p, len(ims)) for p, ims in zip(problems, images)]
        flat = [im for ims in images for im in ims]
        enc = self.processor(text=texts, images=flat or None, return_tensors="pt", padding=True, padding_side="left")
        mm = {k: enc[k] for k in ("pixel_values", "image_grid_thw") if k in enc}
        mm["mm_token_type_ids"] = enc["mm_token_type_ids"]
        # Qwen predicts absolute pixels of its resized input: grid (t, h, w) patches of patch_size px.
        sizes, k = [], 0
        for ims in images:
            grids = enc["image_grid_thw"][k : k + len(ims)].tolist() if ims else []
            sizes.append([(w * self.patch_size, h * self.patch_size) for _, h, w in grids])
            k += len(ims)
        return PromptBatch(enc["input_ids"], enc["attention_mask"], mm, sizes)

    def repeat_prompts(self, prompts: PromptBatch, times: int) -> PromptBatch:
        """Each prompt ``times`` times in a row (row i*times + j is prompt i's j-th copy)."""
        if times == 1:
            return prompts
        n_img = [len(s) for s in prompts.input_sizes]
        grid = prompts.mm_inputs.get("image_grid_thw")
        mm = {"mm_token_type_ids": prompts.mm_inputs["mm_token_type_ids"].repeat_interleave(times, dim=0)}
        if grid is not None:
            grids = grid.split(n_img)  # [n_images_i, 3] per prompt
            patches = prompts.mm_inputs["pixel_values"].split([int(g.prod(-1).sum()) for g in grids])
            mm["image_grid_thw"] = torch.cat([g for g in grids for _ in range(times)])
            mm["pixel_values"] = torch.cat([p for p in patches for _ in range(times)])
        return PromptBatch(
            prompts.input_ids.repeat_interleave(times, dim=0),
            prompts.attention_mask.repeat_interleave(times, dim=0),
            mm,
            [s for s in prompts.input_sizes for _ in range(times)],
        )

    def slice_prompts(self, prompts: PromptBatch, start: int, stop: int) -> PromptBatch:
        """Rows ``start:stop`` with their images (images of a row are contiguous in pixel_values)."""
        n_img = [len(s) for s in prompts.input_sizes]
        mm = {"mm_token_type_ids": prompts.mm_inputs["mm_token_type_ids"][start:stop]}
        grid = prompts.mm_inputs.get("image_grid_thw")
        first, last = sum(n_img[:start]), sum(n_img[:stop])
        # Rows without images get no image tensors: the model cannot run its vision tower on zero images.
        if grid is not None and last > first:
            patches = grid.prod(-1)  # [n_images] patches per image
            lo, hi = int(patches[:first].sum()), int(patches[:last].sum())
            mm["image_grid_thw"] = grid[first:last]
            mm["pixel_values"] = prompts.mm_inputs["pixel_values"][lo:hi]
        return PromptBatch(
            prompts.input_ids[start:stop], prompts.attention_mask[start:stop], mm, prompts.input_sizes[start:stop]
        )

    def sequence_inputs(self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict:
        # Completions are text: token type 0. Without mm_token_type_ids transformers would
        # silently fall back to 1-D rotary positions for the image tokens.
        token_types = torch.cat([prompts.mm_inputs["mm_token_type_ids"], torch.zeros_like(completion_ids)], dim=1)
        inputs = {
            "input_ids": torch.cat([prompts.input_ids, completion_ids], dim=1),  # [N, Lp + Lc]
            "attention_mask": torch.cat([prompts.attention_mask, completion_mask.to(prompts.attention_mask)], dim=1),
            "mm_token_type_ids": token_types,
        }
        inputs.update({k: v for k, v in prompts.mm_inputs.items() if k != "mm_token_type_ids"})
        return inputs

    def encode_completions(self, texts: list[str]) -> torch.Tensor:
        return encode_answers(self.tokenizer, texts, self.pad_token_id)

    def save(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir)
        if self.model.config.model_type == "qwen2_vl":
            save_qwen2_processor(self.processor, out_dir)
        else:
            save_qwen_processor(self.processor, out_dir)
