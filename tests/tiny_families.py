"""Tiny Qwen2-VL, Qwen3-VL and InternVL checkpoints for the tests, built offline like
``vlmr1.models.tiny.build_tiny`` (which ships: the embedded default and ``model.path=tiny-random`` use it).

Each uses transformers' own model class with random weights (about 1M parameters: text 128 x 2
layers, vision 64 x 2 layers), the byte-level BPE tokenizer of ``tiny.py`` (digits split) and an
image-only processor, so tests exercise the code path a real checkpoint of the family takes.
One image of the family's natural tiny size becomes 16 image tokens:

- Qwen2-VL: 112 px, patch 14, 2 x 2 merge (as the tiny Qwen2.5-VL).
- Qwen3-VL: 128 px, patch 16, 2 x 2 merge; one deepstack layer; interleaved M-RoPE.
- InternVL: 112 px tiles, patch 14, pixel shuffle 0.5; up to 4 tiles (+ a thumbnail) per image.

The chat templates follow each family's layout, written for this project: Qwen2-VL as Qwen2.5-VL
(default system turn), Qwen3-VL without a default system turn, InternVL with ``<IMG_CONTEXT>``
followed by a newline for each image (the processor expands it to ``<img>`` + tokens + ``</img>``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vlmr1.models.internvl import INTERNVL_TOKENS, InternVLImageOnlyProcessor, save_internvl_processor
from vlmr1.models.processing import QwenImageOnlyProcessor
from vlmr1.models.qwen3_vl import Qwen3ImageOnlyProcessor, save_qwen3_processor
from vlmr1.models.qwen_vl import save_qwen2_processor
from vlmr1.models.tiny import CHAT_TEMPLATE, INIT_STD, SYSTEM_TURN, build_tokenizer

# Qwen3-VL's layout: like Qwen2.5-VL's but no system turn unless the conversation has one.
QWEN3_CHAT_TEMPLATE = CHAT_TEMPLATE.replace(SYSTEM_TURN, "")

# InternVL's layout (Qwen2.5 chat markers, as InternVL3's language model is Qwen2.5).
INTERNVL_CHAT_TEMPLATE = QWEN3_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")

# Shared text-model shape: head_dim = 128 / 4 = 32, so 16 rotary frequencies.
TEXT = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=INIT_STD,
)


def _token_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))


def _qwen_vision_ids(tokenizer) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _save(model, tokenizer, out_dir: Path) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)


# ---------------------------------------------------------------- Qwen2-VL


def qwen2_vl_config(tokenizer, **overrides) -> Qwen2VLConfig:
    # mrope_section splits the 16 rotary frequencies into (time, height, width).
    text = dict(TEXT, vocab_size=len(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]})
    vision = dict(depth=2, embed_dim=64, hidden_size=128, mlp_ratio=2, num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2, initializer_range=INIT_STD)
    return Qwen2VLConfig(
        text_config=dict(text, **_token_ids(tokenizer)),
        vision_config=vision,
        tie_word_embeddings=True,
        **_qwen_vision_ids(tokenizer),
        **overrides,
    )


def build_tiny_qwen2_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Tiny ``Qwen2VLForConditionalGeneration`` + tokenizer + processor, saved to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    _save(Qwen2VLForConditionalGeneration(qwen2_vl_config(tokenizer)), tokenizer, out_dir)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2)
    save_qwen2_processor(QwenImageOnlyProcessor(image_processor, tokenizer, chat_template=CHAT_TEMPLATE), out_dir)
    return out_dir


# ---------------------------------------------------------------- Qwen3-VL


def qwen3_vl_config(tokenizer, **overrides) -> Qwen3VLConfig:
    # Interleaved M-RoPE: the 16 frequencies are dealt t, h, w, t, h, w, ... ([6, 5, 5] of them).
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [6, 5, 5], "mrope_interleaved": True}
    text = dict(TEXT, vocab_size=len(tokenizer), head_dim=32, rope_parameters=rope, pad_token_id=_token_ids(tokenizer)["pad_token_id"])
    vision = dict(
        depth=2,
        hidden_size=64,
        intermediate_size=128,
        num_heads=4,
        out_hidden_size=128,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=64,  # a learned 8 x 8 grid, interpolated to each image's grid
        deepstack_visual_indexes=[0],  # vision layer 0's features are added to text layer 0
        initializer_range=INIT_STD,
    )
    return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_qwen_vision_ids(tokenizer), **overrides)


def build_tiny_qwen3_vl(out_dir: str | Path, seed: int = 0) -> Path:
    """Tiny ``Qwen3VLForConditionalGeneration`` + tokenizer + processor, saved to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    torch.manual_seed(seed)
    _save(Qwen3VLForConditionalGeneration(qwen3_vl_config(tokenizer)), tokenizer, out_dir)
    # 128 px -> 8 x 8 patches of 16 px -> 16 tokens after the 2 x 2 merge; Qwen3-VL normalises with 0.5/0.5.
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=64 * 64, max_pixels=128 * 128, patch_size=16, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    save_qwen3_processor(Qwen3ImageOnlyProcessor(image_processor, tokenizer, chat_template=QWEN3_CHAT_TEMPLATE), out_dir)
    return out_dir


# ---------------------------------------------------------------- InternVL


def internvl_tokenizer() -> PreTrainedTokenizerFast:
    """tiny.py's tokenizer plus InternVL's four named vision tokens (appended to the vocabulary)."""
    base = build_tokenizer()
    backend = base.backend_tokenizer
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in INTERNVL_TOKENS.values()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        model_max_length=base.model_max_length,
        padding_side="left",
        extra_special_tokens=dict(INTERNVL_TOKENS),  # gives tokenizer.start_image_token(_id) etc.
    )
    tokenizer.chat_template = INTERNVL_CHAT_TEMPLATE
    return tokenizer


def internvl_config(tokenizer, **overrides) -> InternVLConfig:
    text = dict(TEXT, model_type="qwen2", vocab_size=len(tokenizer), rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **_token_ids(tokenizer))
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=112,
        patch_size=14,
        initializer_range=INIT_STD,
    )
    return InternVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(INTERNVL_TOKENS["context_image_token"]),
        # 112 / 14 = 8 x 8 patches per tile; pixel shuffle 0.5 -> 4 x 4 = 16 tokens per tile.
        image_seq_length=16,
        downsample_ratio=0.5,
        tie_word_embeddings=True,
        **overrides,
    )


def build_tiny_internvl(out_dir: str | Path, seed: int = 0) -> Path:
    """Tiny ``InternVLForConditionalGeneration`` + tokenizer + processor, saved to ``out_dir``."""
    out_dir = Path(out_dir)
    tokenizer = internvl_tokenizer()
    torch.manual_seed(seed)
    _save(InternVLForConditionalGeneration(internvl_config(tokenizer)), tokenizer, out_dir)
    # InternVL normalises with ImageNet statistics and tiles each image into up to max_patches tiles.
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 112, "width": 112},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = InternVLImageOnlyProcessor(image_processor, tokenizer, image_seq_length=16, chat_template=INTERNVL_CHAT_TEMPLATE)
    save_internvl_processor(processor, out_dir)
    return out_dir
