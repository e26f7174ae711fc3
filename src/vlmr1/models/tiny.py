"""A tiny Qwen2.5-VL, built offline: real transformers classes, random weights, local tokenizer.

The model is ``Qwen2_5_VLForConditionalGeneration`` at ~3M parameters (text 256 x 4 layers,
vision 128 x 2 layers, patch 14, merge 2), so tests and the embedded default exercise exactly
the code path a real Qwen2.5-VL checkpoint takes. The tokenizer is a byte-level BPE trained
here on a small built-in corpus, with digits split into single tokens (box coordinates become
short digit sequences the model can learn) and Qwen's special tokens and chat template.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .processing import QwenImageOnlyProcessor, save_qwen_processor

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen's chat layout (system turn added when absent; images in place as
# <|vision_start|><|image_pad|><|vision_end|>), written for this project.
SYSTEM_TURN = (
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    + SYSTEM_TURN
    + "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# 1/sqrt(text hidden) rather than the 0.02 sized for wide models: at 0.02 this narrow model
# ignored the image for hundreds of SFT steps (its loss was identical with shuffled images).
INIT_STD = 0.0625

_WORDS = (
    "the a an of in on at to and or is are this that what which where how many more than "
    "please provide bounding box coordinate coordinates region sentence describes object objects "
    "red green blue yellow purple orange grey gray white black circle square triangle shape shapes "
    "left right top bottom above below next image images picture find locate output answer think "
    "thinking process final tags first then label labels count number there you assistant helpful "
    "system user detect category categories json none yes no button field text before after defect"
).split()


def _corpus() -> list[str]:
    """Sentences in the style of the prompts and answers the tiny model will see."""
    lines = [" ".join(_WORDS)]
    colours = _WORDS[_WORDS.index("red") : _WORDS.index("black") + 1]
    shapes = ["circle", "square", "triangle"]
    for colour, shape in itertools.product(colours, shapes):
        lines.append(
            f"Please provide the bounding box coordinate of the region this sentence describes: the {colour} {shape}."
        )
        lines.append(f"<think>The {colour} {shape} is at the left.</think> <answer>[12, 34, 56, 78]</answer>")
    lines.append('```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "red circle"}]\n```')
    return lines * 20


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    # Digits first: every digit becomes its own pre-token, so BPE never merges "12" into one id.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
        padding_side="left",  # decoder-only generation needs left padding
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_config(tokenizer: PreTrainedTokenizerFast, **overrides) -> Qwen2_5_VLConfig:
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=INIT_STD,
        # mrope_section splits head_dim/2 = 32 rotary frequencies into (time, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )
    vision = dict(
        depth=2,
        hidden_size=128,
        intermediate_size=256,
        num_heads=4,
        out_hidden_size=256,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        initializer_range=INIT_STD,
    )
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
        initializer_range=INIT_STD,
        **overrides,
    )
    return config


def build_image_processor(min_pixels: int = 56 * 56, max_pixels: int = 112 * 112) -> Qwen2VLImageProcessorPil:
    # 112x112 inputs -> 8x8 patches of 14 px -> 16 tokens after the 2x2 merge.
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels, patch_size=14, merge_size=2)


def build_tiny(out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny model, tokenizer and processor and save them in HF format to ``out_dir``."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor = QwenImageOnlyProcessor(build_image_processor(), tokenizer, chat_template=CHAT_TEMPLATE)
    save_qwen_processor(processor, out_dir)
    return out_dir
