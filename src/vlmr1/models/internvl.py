"""Adapter for InternVL (InternVL2.5 / InternVL3 "-hf" checkpoints) through transformers' native
``InternVLForConditionalGeneration`` and ``InternVLProcessor`` (no ``trust_remote_code``).

How InternVL differs from the Qwen-VL family, and what it means here:

- Images are cut into square tiles (448 px in real checkpoints) on a grid whose aspect ratio is
  closest to the image's, at most ``max_patches`` tiles, plus a thumbnail of the whole image when
  there is more than one tile. Every tile becomes ``image_seq_length`` tokens (256 in real
  checkpoints) between ``<img>`` and ``</img>``. The image size is therefore set by tiles, not
  pixels: ``load(path, max_patches=..., min_patches=...)`` (the image processor's option names);
  Qwen's ``min_pixels``/``max_pixels`` are rejected rather than ignored.
- ``pixel_values`` is one [n_tiles, 3, H, W] tensor in prompt order with no per-image grid, so
  the tiles of a row are counted from its image tokens (count / ``image_seq_length``).
- Positions are plain 1-D (a Qwen2 language model). ``sequence_inputs`` passes them explicitly,
  counted over the attention mask, exactly as ``generate`` builds them under left padding. (With
  rotary embeddings a uniform shift would not change the logits beyond rounding; passing them
  keeps the training forward the same computation as the sampling one.)
- ``input_sizes`` is the tiled canvas the model sees, (columns x tile, rows x tile), thumbnail
  aside. InternVL answers grounding in a 0-1000 frame normalised to the image
  (``[[x1, y1, x2, y2]]`` after ``<box>``), not in canvas pixels.
- Processor without torchvision: ``GotOcr2ImageProcessorPil`` (the PIL backend of InternVL's
  image processor) needs only PIL and numpy, but ``InternVLProcessor`` insists on a video
  processor, and ``InternVLVideoProcessor`` imports torchvision. Where torchvision is missing an
  image-only subclass (video processor left out of its sub-processor list) is built from the same
  files and saved under the stock class name, with a default video processor config, so the
  folder loads with the stock processor where torchvision exists. Tiles resized by PIL and by the
  torchvision ("fast") backend can differ by a few grey levels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer, InternVLProcessor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil, get_optimal_tiled_canvas

from ..errors import ConfigError
from .adapter import PromptBatch, encode_answers, encoded_prompt_lengths, stop_token_ids, user_content
from .processing import has_torchvision, hub_layout

INTERNVL_MODEL_TYPES = {"internvl"}
# The tokenizer's named vision tokens (``tokenizer.start_image_token`` etc.), as in InternVL3-hf.
INTERNVL_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


class InternVLImageOnlyProcessor(InternVLProcessor):
    """The stock InternVL processor without its video processor (see module docstring)."""

    @classmethod
    def get_attributes(cls):
        # ProcessorMixin takes its sub-processors from this list: leaving the video processor out
        # lets the stock __init__ run unchanged with video_processor=None.
        return ["image_processor", "tokenizer"]

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if videos is not None:
            raise ValueError("videos need torchvision; this environment has only the image-only InternVL processor")
        return super().__call__(images=images, text=text, **kwargs)


def load_internvl_processor(path: str | Path, **image_kwargs):
    """The stock processor when torchvision works, else the image-only one from the same files.

    ``image_kwargs`` (``max_patches``, ``min_patches``) override the saved image settings.
    """
    path = Path(path)
    if has_torchvision():
        return AutoProcessor.from_pretrained(path, local_files_only=True, **image_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    image_processor = GotOcr2ImageProcessorPil.from_pretrained(path, local_files_only=True, **image_kwargs)
    saved = path / "processor_config.json"
    seq_length = json.loads(saved.read_text()).get("image_seq_length", 256) if saved.exists() else 256
    chat_template = tokenizer.chat_template
    if (path / "chat_template.jinja").exists():
        chat_template = (path / "chat_template.jinja").read_text()
    elif (path / "chat_template.json").exists():  # the older layout of -hf checkpoints
        chat_template = json.loads((path / "chat_template.json").read_text())["chat_template"]
    return InternVLImageOnlyProcessor(image_processor, tokenizer, image_seq_length=seq_length, chat_template=chat_template)


def save_internvl_processor(processor, out_dir: str | Path) -> None:
    """Save so that the folder loads with the stock ``InternVLProcessor`` wherever torchvision is present."""
    out_dir = Path(out_dir)
    processor.save_pretrained(out_dir)
    hub_layout(out_dir)
    if not isinstance(processor, InternVLImageOnlyProcessor):
        return
    for file in out_dir.glob("*.json"):
        data = json.loads(file.read_text())
        if isinstance(data, dict) and data.get("processor_class"):
            data["processor_class"] = "InternVLProcessor"
            file.write_text(json.dumps(data, indent=2))
    ip = processor.image_processor
    video = {
        "video_processor_type": "InternVLVideoProcessor",
        "size": {"height": ip.size.height, "width": ip.size.width},  # frames are single tiles
        "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std),
        "processor_class": "InternVLProcessor",
    }
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


class InternVLAdapter:
    reward_overrides: dict[str, str] = {}
    # The projector sits beside the vision tower, not inside it (unlike Qwen's merger).
    vision_prefix = "model.vision_tower."
    projector_prefix = "model.multi_modal_projector."
    box_frame = "norm1000"  # InternVL grounds in [[x1, y1, x2, y2]] normalised to 0-1000 of the image

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.image_token_id = processor.image_token_id
        self.seq_length = processor.image_seq_length

    @classmethod
    def load(cls, path: str | Path, dtype: torch.dtype = torch.float32, **image_kwargs) -> "InternVLAdapter":
        image_kwargs = {k: v for k, v in image_kwargs.items() if v is not None}
        qwen_only = sorted(set(image_kwargs) & {"min_pixels", "max_pixels"})
        if qwen_only:
            raise ConfigError(f"{path}: InternVL sizes images in tiles; model.{qwen_only[0]} applies to Qwen-VL only (use model.max_patches)")
        unknown = sorted(set(image_kwargs) - {"min_patches", "max_patches"})
        if unknown:
            raise ConfigError(f"{path}: unknown InternVL image options {unknown} (known: min_patches, max_patches)")
        processor = load_internvl_processor(path, **image_kwargs)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, local_files_only=True)
        return cls(model, processor)

    @property
    def eos_token_ids(self) -> list[int]:
        return stop_token_ids(self.model, self.tokenizer)

    @property
    def suppressed_token_ids(self) -> list[int]:
        """Image context, image delimiters and the video placeholder: never part of a completion."""
        p = self.processor
        return [p.image_token_id, p.start_image_token_id, p.end_image_token_id, self.tokenizer.convert_tokens_to_ids(p.video_token)]

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id

    def messages(self, problem: str, n_images: int) -> list[dict]:
        return [{"role": "user", "content": user_content(problem, n_images)}]

    def canvas_size(self, image: Image.Image) -> tuple[int, int]:
        """(w, h) of the tile grid an image is resized to (what the model sees, thumbnail aside)."""
        ip = self.processor.image_processor
        tile_w, tile_h = ip.size.width, ip.size.height
        if ip.max_patches <= 1:  # no tiling: one tile holds the whole image
            return tile_w, tile_h
        cols, rows = get_optimal_tiled_canvas((image.height, image.width), (tile_h, tile_w), ip.min_patches, ip.max_patches)
        return cols * tile_w, rows * tile_h

    def tiles_per_row(self, input_ids: torch.Tensor) -> list[int]:
        return ((input_ids == self.image_token_id).sum(1) // self.seq_length).tolist()

    def prompt_text(self, problem: str, n_images: int) -> str:
        """The chat-templated prompt, image placeholders unexpanded (the processor expands each to its tiles' tokens)."""
        return self.processor.apply_chat_template(self.messages(problem, n_images), add_generation_prompt=True, tokenize=False)

    def prompt_lengths(self, problems: list[str], image_sizes: list[list[tuple[int, int]]]) -> list[int]:
        return encoded_prompt_lengths(self, problems, image_sizes)  # tiles depend on the aspect ratio: encode

    def encode_prompts(self, problems: list[str], images: list[list[Image.Image]]) -> PromptBatch:
        texts = [self.prompt_text(p, len(ims)) for p, ims in zip(problems, images)]
        flat = [im for ims in images for im in ims]
        # Tiling is InternVL's intended input (the stock processor's default); stated so a saved
        # image-processor setting cannot silently turn it off.
        enc = self.processor(
            text=texts, images=flat or None, return_tensors="pt", padding=True, padding_side="left", crop_to_patches=True
        )
        mm = {"pixel_values": enc["pixel_values"]} if flat else {}  # [n_tiles, 3, H, W]
        sizes = [[self.canvas_size(im) for im in ims] for ims in images]
        return PromptBatch(enc["input_ids"], enc["attention_mask"], mm, sizes)

    def _rows(self, prompts: PromptBatch, rows: list[int]) -> PromptBatch:
        """The prompt rows ``rows`` (any order, repeats allowed), each with its own tiles."""
        mm = {}
        if "pixel_values" in prompts.mm_inputs:
            tiles = prompts.mm_inputs["pixel_values"].split(self.tiles_per_row(prompts.input_ids))
            picked = [tiles[r] for r in rows if len(tiles[r])]
            # Rows without images get no pixel_values: the vision tower cannot run on zero tiles.
            if picked:
                mm["pixel_values"] = torch.cat(picked)
        index = torch.tensor(rows, dtype=torch.long)
        return PromptBatch(
            prompts.input_ids[index], prompts.attention_mask[index], mm, [prompts.input_sizes[r] for r in rows]
        )

    def repeat_prompts(self, prompts: PromptBatch, times: int) -> PromptBatch:
        """Each prompt ``times`` times in a row (row i*times + j is prompt i's j-th copy)."""
        if times == 1:
            return prompts
        return self._rows(prompts, [i for i in range(len(prompts)) for _ in range(times)])

    def slice_prompts(self, prompts: PromptBatch, start: int, stop: int) -> PromptBatch:
        return self._rows(prompts, list(range(len(prompts)))[start:stop])

    def sequence_inputs(self, prompts: PromptBatch, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> dict:
        mask = torch.cat([prompts.attention_mask, completion_mask.to(prompts.attention_mask)], dim=1)  # [N, Lp + Lc]
        # generate() numbers positions over the attention mask (left padding does not count);
        # the training forward must use the same numbers.
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        inputs = {
            "input_ids": torch.cat([prompts.input_ids, completion_ids], dim=1),
            "attention_mask": mask,
            "position_ids": positions,
        }
        inputs.update(prompts.mm_inputs)
        return inputs

    def encode_completions(self, texts: list[str]) -> torch.Tensor:
        return encode_answers(self.tokenizer, texts, self.pad_token_id)

    def save(self, out_dir: str | Path) -> None:
        self.model.save_pretrained(out_dir)
        save_internvl_processor(self.processor, out_dir)
