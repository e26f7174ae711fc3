"""Qwen2-VL, Qwen3-VL and InternVL through their adapters, on tiny offline checkpoints
(tests/tiny_families.py): dispatch, images in place, image-size settings, rollouts, log-probs
under left padding, prompt batching, save/reload and two GRPO steps. Every test runs once per family.
"""

import json
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import InternVLForConditionalGeneration, Qwen2VLForConditionalGeneration, Qwen3VLForConditionalGeneration

from vlmr1.config import load_config
from vlmr1.models.loading import load_adapter, model_type
from vlmr1.models.finetune import projector_parameters, vision_tower_parameters
from vlmr1.models.internvl import InternVLAdapter
from vlmr1.models.qwen3_vl import Qwen3VLAdapter
from vlmr1.models.qwen_vl import QwenVLAdapter
from tiny_families import build_tiny_internvl, build_tiny_qwen2_vl, build_tiny_qwen3_vl
from vlmr1.rl.algos import completion_mask
from vlmr1.rl.logprobs import completion_logprobs
from vlmr1.rl.rollout import Sampling, generate, generation_config
from vlmr1.rl.trainer import train

ATOL = 1e-5


def random_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """RGB noise of ``size`` (w, h), the same for the same seed (as conftest's make_image)."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


@dataclass
class Family:
    build: Callable
    adapter: type
    model: type
    processor: str  # stock processor class named in the saved folder
    video_processor: str
    image_start: str  # text marking where an image's tokens begin
    suppressed: list[str]  # vision tokens a completion must never contain
    natural: tuple[int, int]  # image size that becomes exactly 16 tokens (one tile for InternVL)
    wide_tokens: int  # image tokens of a 224 x 112 image (its size_cases entry shows the arithmetic)
    # (load kwargs, image size, image tokens, input size the model sees)
    size_cases: list
    bad_option: dict  # an image option of another family: rejected, not ignored


FAMILIES = {
    "qwen2_vl": Family(
        build_tiny_qwen2_vl, QwenVLAdapter, Qwen2VLForConditionalGeneration, "Qwen2VLProcessor", "Qwen2VLVideoProcessor",
        "<|vision_start|>", ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"],
        (112, 112), 10,
        [
            ({}, (112, 112), 16, (112, 112)),  # 8 x 8 patches of 14 px, merged 2 x 2 -> 16 tokens
            ({"max_pixels": 56 * 56}, (112, 112), 4, (56, 56)),  # halved each side: 4 x 4 patches -> 4 tokens
            # 224 x 112 is 25088 px > 12544: scaled by 1/sqrt(2) and floored to 28 px -> 140 x 56 = 10 x 4 patches -> 10
            ({}, (224, 112), 10, (140, 56)),
            ({}, (56, 56), 4, (56, 56)),  # at min_pixels 56 * 56 already: 4 x 4 patches -> 4 tokens
            ({"min_pixels": 112 * 112}, (56, 56), 16, (112, 112)),  # upscaled to the new minimum
        ],
        {"max_patches": 2},
    ),
    "qwen3_vl": Family(
        build_tiny_qwen3_vl, Qwen3VLAdapter, Qwen3VLForConditionalGeneration, "Qwen3VLProcessor", "Qwen3VLVideoProcessor",
        "<|vision_start|>", ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"],
        (128, 128), 10,
        [
            ({}, (128, 128), 16, (128, 128)),  # 8 x 8 patches of 16 px, merged 2 x 2 -> 16 tokens
            ({"max_pixels": 64 * 64}, (128, 128), 4, (64, 64)),
            # 224 x 112 rounds to 224 x 128 = 28672 px > 16384: scaled by sqrt(25088 / 16384) = 1.237 and
            # floored to 32 px -> 160 x 64 = 10 x 4 patches -> 10 tokens
            ({}, (224, 112), 10, (160, 64)),
            ({}, (64, 64), 4, (64, 64)),
            ({"min_pixels": 128 * 128}, (64, 64), 16, (128, 128)),
        ],
        {"max_patches": 2},
    ),
    "internvl": Family(
        build_tiny_internvl, InternVLAdapter, InternVLForConditionalGeneration, "InternVLProcessor", "InternVLVideoProcessor",
        "<img>", ["<IMG_CONTEXT>", "<img>", "</img>", "<video>"],
        (112, 112), 48,
        [
            ({}, (112, 112), 16, (112, 112)),  # one 112 px tile (no thumbnail for one tile) -> 16 tokens
            # aspect 3: grid 3 x 1 (of <= 4 tiles) + thumbnail = 4 tiles x 16 = 64 tokens
            ({}, (336, 112), 64, (336, 112)),
            # the best grid of <= 2 tiles is 2 x 1, + thumbnail = 3 tiles x 16 = 48 (as a 224 x 112 image by default)
            ({"max_patches": 2}, (336, 112), 48, (224, 112)),
            ({"max_patches": 1}, (336, 112), 16, (112, 112)),  # no tiling: the whole image in one tile
            # a square image in >= 2 tiles: the only square grid of 2..4 tiles is 2 x 2, + thumbnail = 5 x 16 = 80
            ({"min_patches": 2}, (112, 112), 80, (224, 224)),
        ],
        {"max_pixels": 112 * 112},
    ),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def fam(request, tmp_path_factory):
    """(name, spec, checkpoint folder, adapter in eval mode), built once per family. Read-only for tests."""
    name = request.param
    spec = FAMILIES[name]
    path = spec.build(tmp_path_factory.mktemp(name))
    adapter = load_adapter(path)
    adapter.model.eval()
    return name, spec, path, adapter


def completions(adapter, texts):
    ids = adapter.encode_completions(texts)  # [N, Lc] right-padded, ending in EOS
    return ids, completion_mask(ids, adapter.eos_token_ids, adapter.pad_token_id)


def logprobs(adapter, prompts, ids, mask, temperature=1.0):
    with torch.no_grad():
        return completion_logprobs(adapter.model, adapter.sequence_inputs(prompts, ids, mask), ids, temperature)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def image_tokens(adapter, prompts) -> list[int]:
    return (prompts.input_ids == adapter.model.config.image_token_id).sum(1).tolist()


# Prompts of different lengths (left padding) with 1, 2 (in place) and 0 images.
PROBLEMS = ["Red?", "Before: <image> After: <image> Which one has more shapes?", "Count the shapes please."]
ANSWERS = ["[1, 2, 3, 4]", "<answer>left</answer>", "three"]


def batch_images(spec):
    return [[random_image(10, spec.natural)], [random_image(11, spec.natural), random_image(12, (224, 112))], []]


# ---------------------------------------------------------------- build, dispatch, prompts


def test_build_offline_and_load_by_model_type(fam):
    name, spec, path, adapter = fam
    assert model_type(path) == name
    assert type(adapter) is spec.adapter and type(adapter.model) is spec.model
    # The folder names the stock processors, so it loads with them wherever torchvision exists,
    # in the Hub's layout: the image processor in preprocessor_config.json (transformers 4.x and
    # vLLM read it there), no loading flags in tokenizer_config.json.
    assert json.loads((path / "preprocessor_config.json").read_text())["processor_class"] == spec.processor
    nested = path / "processor_config.json"
    assert not nested.exists() or "image_processor" not in json.loads(nested.read_text())
    assert not {"is_local", "local_files_only"} & set(json.loads((path / "tokenizer_config.json").read_text()))
    video = json.loads((path / "video_preprocessor_config.json").read_text())
    assert video["video_processor_type"] == spec.video_processor
    # Vision tower and projector are found by name and do not overlap.
    tower, proj = vision_tower_parameters(adapter), projector_parameters(adapter)
    assert tower and proj and not {id(p) for p in tower} & {id(p) for p in proj}


def test_single_and_two_image_prompts_put_images_in_place(fam):
    _, spec, _, a = fam
    one = a.encode_prompts(["Where is the red circle?"], [[random_image(0, spec.natural)]])
    assert image_tokens(a, one) == [16] and one.input_sizes == [[spec.natural]]

    x, y = random_image(1, spec.natural), random_image(2, spec.natural)
    problem = "Before: <image> After: <image> Which?"
    xy, yx = a.encode_prompts([problem], [[x, y]]), a.encode_prompts([problem], [[y, x]])
    assert image_tokens(a, xy) == [32] and xy.input_sizes == [[spec.natural, spec.natural]]
    text = a.tokenizer.decode(xy.input_ids[0])
    assert text.index("Before:") < text.index(spec.image_start) < text.index("After:") < text.rindex(spec.image_start)
    # Swapping the images swaps which pixels the placeholders get, and nothing else.
    assert torch.equal(xy.input_ids, yx.input_ids)
    pixels_xy, pixels_yx = xy.mm_inputs["pixel_values"], yx.mm_inputs["pixel_values"]
    half = pixels_xy.shape[0] // 2
    assert torch.equal(pixels_xy[:half], pixels_yx[half:]) and not torch.equal(pixels_xy[:half], pixels_yx[:half])


@pytest.mark.parametrize("case", range(5))
def test_image_size_settings_change_the_image_tokens(fam, case):
    _, spec, path, _ = fam
    kwargs, size, n_tokens, input_size = spec.size_cases[case]
    a = load_adapter(path, **kwargs)
    prompts = a.encode_prompts(["Where?"], [[random_image(case, size)]])
    assert image_tokens(a, prompts) == [n_tokens]
    assert prompts.input_sizes == [[input_size]]


def test_options_of_another_family_are_rejected(fam):
    _, spec, path, _ = fam
    with pytest.raises(ValueError, match=next(iter(spec.bad_option))):
        load_adapter(path, **spec.bad_option)
    load_adapter(path, **{k: None for k in spec.bad_option})  # None means "not set": accepted


@pytest.mark.parametrize(
    "problem,sizes",
    [
        ("the red circle", [(112, 112)]),  # the family's natural size
        ("a <image> b", [(640, 480)]),  # resized down (Qwen) / tiled (InternVL)
        ("x y z", [(37, 300)]),  # tall and narrow
        ("no image at all", []),
        ("Before: <image> After: <image> what changed?", [(112, 112), (200, 50)]),
    ],
)
def test_prompt_lengths_without_images_equal_the_encoded_lengths(fam, problem, sizes):
    # Data loading holds every prompt to the context by prompt_lengths, from image sizes alone;
    # it must count exactly the tokens encode_prompts gives with real images of those sizes.
    _, _, _, adapter = fam
    images = [random_image(k, size) for k, size in enumerate(sizes)]
    encoded = int(adapter.encode_prompts([problem], [images]).attention_mask.sum())
    assert adapter.prompt_lengths([problem], [sizes]) == [encoded]


# ---------------------------------------------------------------- rollouts and log-probs


def test_generate_samples_completions_without_image_tokens(fam):
    _, spec, _, a = fam
    prompts = a.repeat_prompts(a.encode_prompts(PROBLEMS[:2], batch_images(spec)[:2]), 2)
    torch.manual_seed(0)
    out = generate(a.model, a, prompts, Sampling(max_new_tokens=6, temperature=1.0))
    assert out.completion_ids.shape[0] == 4 and len(out.texts) == 4 and out.completion_mask[:, 0].all()
    assert sorted(a.suppressed_token_ids) == sorted(a.tokenizer.convert_tokens_to_ids(spec.suppressed))
    # Near-uniform sampling (temperature 100) over ~555 tokens: 400 rows draw ~3,200 tokens before
    # their EOS, each token ~6 times, so the 4 vision tokens would show up ~20 times unsuppressed
    # (measured with seed 0: 18 for each family).
    many = a.repeat_prompts(a.encode_prompts(["Count the shapes."], [[]]), 400)
    out = generate(a.model, a, many, Sampling(max_new_tokens=8, temperature=100.0))
    assert not torch.isin(out.completion_ids, torch.tensor(a.suppressed_token_ids)).any()


def test_completion_logprobs_equal_full_forward_log_softmax(fam):
    _, spec, _, a = fam
    batch = a.encode_prompts(PROBLEMS, batch_images(spec))
    assert (batch.attention_mask == 0).any(), "the batch must contain left padding"
    ids, mask = completions(a, ANSWERS)
    inputs = a.sequence_inputs(batch, ids, mask)
    Lp, Lc = batch.input_ids.shape[1], ids.shape[1]
    with torch.no_grad():
        logits = a.model(**inputs).logits  # [N, Lp + Lc, V]
    predicting = logits[:, Lp - 1 : Lp + Lc - 1]  # position t predicts token t + 1
    for temperature in (1.0, 0.5):
        expected = torch.log_softmax(predicting / temperature, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        close(logprobs(a, batch, ids, mask, temperature), expected)


def test_training_logprobs_match_what_generate_sampled_from(fam):
    """generate's own per-step scores equal one forward over prompt + completion, under left padding:
    the positions (Qwen's 3-D rotary ones, InternVL's 1-D ones) are rebuilt the same way in both."""
    _, spec, _, a = fam
    prompts = a.encode_prompts(PROBLEMS, batch_images(spec))
    cfg = generation_config(Sampling(max_new_tokens=8), a.eos_token_ids, a.pad_token_id)
    cfg.output_scores, cfg.return_dict_in_generate = True, True
    torch.manual_seed(0)
    with torch.no_grad():
        out = a.model.generate(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, **prompts.mm_inputs, generation_config=cfg)
    ids = out.sequences[:, prompts.input_ids.shape[1] :]
    mask = completion_mask(ids, a.eos_token_ids)
    ids = ids.masked_fill(mask == 0, a.pad_token_id)
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # [N, Lc, V]
    expected = sampled.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    close(logprobs(a, prompts, ids, mask) * mask, expected)


def test_repeat_and_slice_prompts_keep_each_rows_logprobs(fam):
    _, spec, _, a = fam
    images = batch_images(spec)
    ids, mask = completions(a, ANSWERS)  # [3, Lc]
    alone = [logprobs(a, a.encode_prompts([p], [ims]), ids[i : i + 1], mask[i : i + 1])[0] for i, (p, ims) in enumerate(zip(PROBLEMS, images))]
    G = 2
    batch = a.encode_prompts(PROBLEMS, images)
    assert image_tokens(a, batch) == [16, 16 + spec.wide_tokens, 0]
    rep = a.repeat_prompts(batch, G)  # row i*G + j is prompt i's j-th copy
    rep_ids, rep_mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    assert len(rep) == 3 * G and image_tokens(a, rep) == [16, 16, 16 + spec.wide_tokens, 16 + spec.wide_tokens, 0, 0]
    for start, stop in [(0, 6), (1, 4), (3, 5), (4, 6), (5, 6)]:  # slices through groups; (4, 6) has no image
        part = a.slice_prompts(rep, start, stop)
        assert part.input_sizes == rep.input_sizes[start:stop]
        logp = logprobs(a, part, rep_ids[start:stop], rep_mask[start:stop])
        for k, row in enumerate(range(start, stop)):
            valid = mask[row // G].bool()
            close(logp[k][valid], alone[row // G][valid])


def test_save_then_reload_gives_identical_logprobs(fam, tmp_path):
    name, spec, _, a = fam
    a.save(tmp_path)
    assert json.loads((tmp_path / "preprocessor_config.json").read_text())["processor_class"] == spec.processor
    b = load_adapter(tmp_path)
    b.model.eval()
    assert type(b) is type(a) and model_type(tmp_path) == name
    before, after = a.encode_prompts(PROBLEMS, batch_images(spec)), b.encode_prompts(PROBLEMS, batch_images(spec))
    assert torch.equal(before.input_ids, after.input_ids) and before.input_sizes == after.input_sizes
    assert before.mm_inputs.keys() == after.mm_inputs.keys()
    assert all(torch.equal(before.mm_inputs[k], after.mm_inputs[k]) for k in before.mm_inputs)
    ids, mask = completions(a, ANSWERS)
    assert torch.equal(logprobs(a, before, ids, mask), logprobs(b, after, ids, mask))


# ---------------------------------------------------------------- training

REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"


def test_two_grpo_steps_run_and_move_the_weights(fam, tmp_path):
    _, _, path, _ = fam
    reward = tmp_path / "r.py"
    reward.write_text(REWARD)
    out = tmp_path / "run"
    # As tests/test_trainer.py's grpo_config (2 prompts x 4 completions of <= 8 tokens), no evaluation.
    cfg = load_config(
        None,
        [
            f"model.path={path}",
            "data.num_train=16",
            "data.num_eval=8",
            "train.prompts_per_step=2",
            "rollout.group_size=4",
            "rollout.max_completion_length=8",
            "train.micro_batch_size=4",
            "train.steps=2",
            "train.lr=1e-3",
            "train.progress=false",
            "train.eval_before=false",
            "train.eval_after=false",
            f"train.output_dir={out}",
            f"reward.funcs=[{reward}:length_reward]",
            "reward.weights=null",
        ],
    )
    train(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("loss", "reward", "kl", "grad_norm"):
            assert math.isfinite(row[key]), key
    assert abs(rows[0]["kl"]) < 1e-6 < rows[1]["kl"]  # step 1 starts from the reference weights
    start, final = load_file(path / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert start.keys() == final.keys()
    changed = [k for k in start if not torch.equal(start[k], final[k])]
    # Images reach the vision tower and gradients flow back into it (saved names: visual.* or
    # vision_tower.*), and the language model moves too.
    assert any("visual." in k or "vision_tower." in k for k in changed)
    assert any("layers." in k and "visual." not in k for k in changed)
    assert model_type(out / "final") == model_type(path)


def test_box_answers_are_mapped_from_the_familys_frame(fam):
    # Qwen2-VL, Qwen3-VL and InternVL answer boxes in 0-1000 of the image; the reward maps them
    # to original pixels through the input_size column the trainer fills from box_frames.
    # A 224x112 image and the answer [500, 0, 1000, 1000] = the right half: [112, 0, 224, 112].
    from vlmr1.models.adapter import box_frames
    from vlmr1.rewards.grounding import iou_reward

    name, _, _, adapter = fam
    prompts = adapter.encode_prompts(["<image>Where?", "No image."], [[random_image(1, (224, 112))], []])
    frames = box_frames(adapter, prompts)
    assert frames[1] is None
    assert frames[0] == (1000, 1000) and adapter.box_frame == "norm1000", name
    answer = "<|box_start|>(500,0),(1000,1000)<|box_end|>" if name == "qwen2_vl" else "[500, 0, 1000, 1000]"
    score = iou_reward([answer], ["[112, 0, 224, 112]"], image_size=[(224, 112)], input_size=frames[:1])
    assert score == [pytest.approx(1.0)]


def test_qwen2_5_vl_answers_in_pixels_of_its_resized_input(tiny_adapter, make_image):
    from vlmr1.models.adapter import box_frames

    prompts = tiny_adapter.encode_prompts(["<image>Where?"], [[make_image(1, (150, 90))]])
    assert tiny_adapter.box_frame == "input" and box_frames(tiny_adapter, prompts) == [prompts.input_sizes[0][0]]


@pytest.mark.parametrize("lora_vision", [False, True])
def test_lora_skips_the_projector_outside_the_vision_tower(fam, lora_vision):
    # InternVL's projector (model.multi_modal_projector) is not under the vision tower's prefix;
    # a target naming its layers must still leave it alone unless model.lora_vision is set.
    from vlmr1.config import load_config
    from vlmr1.models.loading import load_model

    name, _, path, _ = fam
    if name != "internvl":
        pytest.skip("only InternVL keeps its projector outside the vision tower")
    cfg = load_config(None, [f"model.path={path}", "model.lora_rank=2", "model.lora_target_modules=[linear_1, q_proj]",
                             f"model.lora_vision={str(lora_vision).lower()}"])  # fmt: skip
    adapter = load_model(cfg, path, fresh_lora=True)
    wrapped = {n.split(".lora_A")[0] for n, _ in adapter.model.named_parameters() if ".lora_A." in n}
    assert any(n.endswith("q_proj") and "language_model" in n for n in wrapped)
    assert any("multi_modal_projector" in n for n in wrapped) == lora_vision
