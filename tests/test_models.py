"""The tiny Qwen2.5-VL through the adapter: tokenizer, chat template, save/load, prompt batching,
log-probs and rollouts. Everything runs on the session's tiny random model (conftest.py)."""

import json
import os
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForImageTextToText, Qwen2_5_VLForConditionalGeneration

from vlmr1.errors import ModelFolderError
from vlmr1.models.adapter import PromptBatch
from vlmr1.models.loading import load_adapter, model_type
from vlmr1.models.processing import QwenImageOnlyProcessor, load_qwen_processor
from vlmr1.models.qwen_vl import QwenVLAdapter
from vlmr1.models.tiny import CHAT_TEMPLATE, build_config, build_image_processor, build_tokenizer
from vlmr1.rl.algos import completion_mask
from vlmr1.rl.logprobs import completion_logprobs, selective_log_softmax
from vlmr1.rl.rollout import Sampling, generate, generation_config

ATOL = 1e-5
VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def completions(adapter, texts):
    """Right-padded completion ids ending in EOS and their mask: [N, Lc] each."""
    ids = adapter.encode_completions(texts)
    return ids, completion_mask(ids, adapter.eos_token_ids, adapter.pad_token_id)


# ---------------------------------------------------------------- tokenizer and chat template


def test_tokenizer_splits_digits_and_decodes_exactly(tiny_adapter):
    tok = tiny_adapter.tokenizer
    text = "[112, 7, 45, 100]"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    # Every token holding a digit is exactly one digit: 1,1,2 | 7 | 4,5 | 1,0,0.
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("112745100")
    assert tok.decode(ids) == text
    answer = "<think>The red circle is at the left.</think> <answer>[12, 34, 56, 78]</answer>"
    assert tok.decode(tok(answer, add_special_tokens=False)["input_ids"]) == answer


def test_chat_template_places_images_and_generation_prompt(tiny_adapter):
    proc = tiny_adapter.processor
    messages = tiny_adapter.messages("Where is the red circle?", 1)
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert f"<|im_start|>user\n{VISION}Where is the red circle?<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    closed = proc.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert closed.endswith("Where is the red circle?<|im_end|>\n")
    two = proc.apply_chat_template(tiny_adapter.messages("Compare.", 2), add_generation_prompt=True, tokenize=False)
    assert f"<|im_start|>user\n{VISION}{VISION}Compare.<|im_end|>" in two


@pytest.mark.parametrize(
    "problem, n, expected",
    [
        # No placeholder: images first (VLM-R1's layout).
        ("Compare.", 2, "{V}{V}Compare."),
        # Placeholders: each image where the conversation puts it, surrounding text verbatim.
        ("Before: <image> After: <image> Which?", 2, "Before: {V} After: {V} Which?"),
        ("<image>Where is it?", 1, "{V}Where is it?"),
        ("Look<image>", 1, "Look{V}"),
        ("<image><image>Same?", 2, "{V}{V}Same?"),
    ],
)
def test_images_go_where_the_conversation_puts_them(tiny_adapter, problem, n, expected):
    text = tiny_adapter.processor.apply_chat_template(tiny_adapter.messages(problem, n), add_generation_prompt=True, tokenize=False)
    assert f"<|im_start|>user\n{expected.replace('{V}', VISION)}<|im_end|>" in text


def test_placeholder_count_must_match_images(tiny_adapter):
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        tiny_adapter.messages("Before: <image> after?", 2)


def test_in_place_images_reach_the_model_in_order(tiny_adapter, make_image):
    # Two different images: swapping them in the placeholders must change the pixel order the
    # vision tower sees, i.e. the image tokens after "Before:" are the first image's.
    a, b = make_image(1), make_image(2)
    ids_ab = tiny_adapter.encode_prompts(["Before: <image> After: <image> Same?"], [[a, b]])
    ids_ba = tiny_adapter.encode_prompts(["Before: <image> After: <image> Same?"], [[b, a]])
    assert torch.equal(ids_ab.input_ids, ids_ba.input_ids)  # same token layout
    n = ids_ab.mm_inputs["pixel_values"].shape[0] // 2
    assert torch.equal(ids_ab.mm_inputs["pixel_values"][:n], ids_ba.mm_inputs["pixel_values"][n:])
    tok = tiny_adapter.tokenizer
    text = tok.decode(ids_ab.input_ids[0])
    assert text.index("Before:") < text.index("<|vision_start|>") < text.index("After:") < text.rindex("<|vision_start|>")


# ---------------------------------------------------------------- save / load


def test_save_load_round_trip(tiny_dir, make_image):
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir, local_files_only=True)
    assert type(model) is Qwen2_5_VLForConditionalGeneration
    # build_tiny initialises with torch.manual_seed(0): the loaded weights are exactly those.
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    fresh = Qwen2_5_VLForConditionalGeneration(build_config(tokenizer)).state_dict()
    loaded = model.state_dict()
    assert fresh.keys() == loaded.keys()
    assert all(torch.equal(fresh[k], loaded[k]) for k in fresh)

    before = QwenImageOnlyProcessor(build_image_processor(), tokenizer, chat_template=CHAT_TEMPLATE)
    after = load_qwen_processor(tiny_dir)
    images = [make_image(0), make_image(1, (150, 90)), make_image(2, (60, 200))]
    messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in ("red", "a green square")]
    messages.append([{"role": "user", "content": [{"type": "text", "text": "blue"}]}])
    texts = [before.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    assert texts == [after.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    texts[2] = texts[2].replace("blue", f"{VISION}blue")  # third prompt: one image, placed by hand
    kw = dict(text=texts, images=images, return_tensors="pt", padding=True, padding_side="left")
    enc_before, enc_after = before(**kw), after(**kw)
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(enc_before[key], enc_after[key]), key


def test_112px_image_is_16_tokens(tiny_adapter, make_image):
    batch = tiny_adapter.encode_prompts(["Where is the red circle?"], [[make_image(0)]])
    pad_id = tiny_adapter.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # 112 px / 14 px patches = 8 x 8 patches; merged 2 x 2 -> 16 tokens.
    assert int((batch.input_ids == pad_id).sum()) == 16
    assert batch.mm_inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    assert batch.mm_inputs["pixel_values"].shape == (64, 3 * 2 * 14 * 14)  # 64 patches of 3 ch x 2 frames x 14 x 14
    assert batch.input_sizes == [[(112, 112)]]


def test_load_adapter_picks_by_model_type(tiny_adapter, tiny_dir, tmp_path):
    assert isinstance(tiny_adapter, QwenVLAdapter)
    assert model_type(tiny_dir) == "qwen2_5_vl"
    config = json.loads((tiny_dir / "config.json").read_text())
    config["model_type"] = "llava_next"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="model_type 'llava_next' has no adapter"):
        load_adapter(tmp_path)
    with pytest.raises(ModelFolderError, match="missing: no such folder"):
        load_adapter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="empty/config.json: not found"):
        load_adapter(tmp_path / "empty")


# ---------------------------------------------------------------- prompt batches and log-probs

PROBLEMS = [
    "Red?",  # short prompt: left-padded in the batch
    "Please provide the bounding box coordinate of the region this sentence describes: the green square.",
    "Which of the two images has more shapes?",  # two images
    "Count the shapes.",  # no image at all
]
ANSWERS = ["[1, 2, 3, 4]", "<answer>[12, 34, 56, 78]</answer>", "left", "three"]


def _images(make_image):
    return [[make_image(10)], [make_image(11, (150, 90))], [make_image(12), make_image(13, (84, 140))], []]


def _logprobs(adapter, prompts: PromptBatch, ids, mask, temperature=1.0):
    with torch.no_grad():
        return completion_logprobs(adapter.model, adapter.sequence_inputs(prompts, ids, mask), ids, temperature)


def test_repeat_and_slice_prompts_keep_each_rows_logprobs(tiny_adapter, make_image):
    a = tiny_adapter
    images = _images(make_image)
    ids, mask = completions(a, ANSWERS)  # [4, Lc]
    alone = [_logprobs(a, a.encode_prompts([p], [ims]), ids[i : i + 1], mask[i : i + 1])[0] for i, (p, ims) in enumerate(zip(PROBLEMS, images))]

    batch = a.encode_prompts(PROBLEMS, images)
    lengths = batch.attention_mask.sum(1)
    assert len(set(lengths.tolist())) == len(PROBLEMS)  # different lengths, so some rows are padded...
    assert batch.attention_mask[lengths.argmin(), 0] == 0  # ...on the left
    assert batch.mm_inputs["image_grid_thw"].shape[0] == 4  # 1 + 1 + 2 + 0 images

    G = 3
    rep = a.repeat_prompts(batch, G)  # row i*G + j is prompt i's j-th copy
    rep_ids, rep_mask = ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0)
    assert len(rep) == 4 * G and rep.mm_inputs["image_grid_thw"].shape[0] == 4 * G
    logp = _logprobs(a, rep, rep_ids, rep_mask)
    for row in range(4 * G):
        valid = mask[row // G].bool()
        close(logp[row][valid], alone[row // G][valid])

    # Slices that cut through groups, including the two-image and the image-free prompts.
    for start, stop in [(2, 5), (5, 9), (7, 12), (11, 12)]:
        part = a.slice_prompts(rep, start, stop)
        assert part.input_sizes == rep.input_sizes[start:stop]
        n_patches = sum(w * h for sizes in part.input_sizes for w, h in sizes) // 14**2
        assert part.mm_inputs.get("pixel_values", torch.empty(0, 1)).shape[0] == n_patches
        logp = _logprobs(a, part, rep_ids[start:stop], rep_mask[start:stop])
        for k, row in enumerate(range(start, stop)):
            valid = mask[row // G].bool()
            close(logp[k][valid], alone[row // G][valid])


def test_mm_token_type_ids_mark_images_and_change_positions(tiny_adapter, make_image):
    a = tiny_adapter
    batch = a.encode_prompts(["Where is the red circle?"], [[make_image(0)]])
    types = batch.mm_inputs["mm_token_type_ids"]
    image_pad = a.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert types.shape == batch.input_ids.shape
    assert torch.equal(types.bool(), batch.input_ids == image_pad)
    ids, mask = completions(a, ["[1, 2, 3, 4]"])
    inputs = a.sequence_inputs(batch, ids, mask)
    assert inputs["mm_token_type_ids"].shape == inputs["input_ids"].shape
    assert not inputs["mm_token_type_ids"][:, -ids.shape[1] :].any()  # completions are text
    with torch.no_grad():
        with_types = a.model(**inputs).logits
        without = a.model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    # With token types the image gets 2-D (h, w) rotary positions and the text after it is shifted;
    # without them transformers uses plain 1-D positions, so the logits after the image differ.
    assert (with_types - without).abs().max() > 1e-3


def test_completion_logprobs_equal_full_forward_log_softmax(tiny_adapter, make_image):
    a = tiny_adapter
    batch = a.encode_prompts(PROBLEMS[:2], _images(make_image)[:2])
    ids, mask = completions(a, ANSWERS[:2])
    inputs = a.sequence_inputs(batch, ids, mask)
    Lp, Lc = batch.input_ids.shape[1], ids.shape[1]
    with torch.no_grad():
        logits = a.model(**inputs).logits  # [N, Lp + Lc, V]
    predicting = logits[:, Lp - 1 : Lp + Lc - 1]  # position t predicts token t + 1
    results = {}
    for temperature in (1.0, 0.5):
        expected = torch.log_softmax(predicting / temperature, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        results[temperature] = _logprobs(a, batch, ids, mask, temperature)
        close(results[temperature], expected)
    assert (results[1.0] - results[0.5]).abs().max() > 1e-2  # the temperature is really applied


# ---------------------------------------------------------------- rollouts


def _rollout_prompts(a, make_image, G=2):
    return a.repeat_prompts(a.encode_prompts(PROBLEMS[:2], _images(make_image)[:2]), G)


def test_sampling_with_top_k_1_equals_greedy(tiny_adapter, make_image):
    a = tiny_adapter
    prompts = _rollout_prompts(a, make_image)
    greedy = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=False))
    assert greedy.completion_ids.shape == (4, 8) and len(greedy.texts) == 4
    for temperature in (0.7, 1.5):
        torch.manual_seed(1)
        top1 = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=True, temperature=temperature, top_k=1))
        assert torch.equal(top1.completion_ids, greedy.completion_ids)
    # Control: without top_k the same call really samples, so the equality above is not vacuous.
    torch.manual_seed(1)
    free = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=True, temperature=1.5))
    assert not torch.equal(free.completion_ids, greedy.completion_ids)


def test_top_k_0_samples_the_whole_vocabulary(tiny_adapter, monkeypatch):
    a = tiny_adapter
    # Stock Qwen2.5-VL checkpoints ship generation_config.json with top_k=1, and HF's own default
    # is top_k=50. rollout.top_k=0 means "off": neither may leak into the rollout.
    monkeypatch.setattr(a.model.generation_config, "top_k", 1)
    prompts = a.repeat_prompts(a.encode_prompts(["Count the shapes."], [[]]), 200)
    torch.manual_seed(0)
    # temperature 100 flattens the distribution to nearly uniform over ~550 tokens:
    # 200 draws give ~170 distinct first tokens; a top-50 (or top-1) filter gives <= 50.
    out = generate(a.model, a, prompts, Sampling(max_new_tokens=1, do_sample=True, temperature=100.0, top_k=0))
    assert out.completion_ids[:, 0].unique().numel() > 100


def test_completions_never_hold_image_placeholder_tokens(tiny_adapter):
    # An <|image_pad|> sampled into a completion would make the next forward fail ("image
    # features and image tokens do not match"). Near-uniform sampling (temperature 100) over the
    # ~550-token vocabulary draws each token ~1600/550 ~ 3 times in 1,600 draws, so without the
    # suppression the four vision tokens would show up ~12 times.
    a = tiny_adapter
    banned = a.suppressed_token_ids
    assert a.model.config.image_token_id in banned and len(banned) == 4
    prompts = a.repeat_prompts(a.encode_prompts(["Count the shapes."], [[]]), 200)
    torch.manual_seed(0)
    out = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=True, temperature=100.0))
    assert not torch.isin(out.completion_ids, torch.tensor(banned)).any()


def test_suppressed_tokens_leave_the_log_softmax():
    # Suppressing tokens renormalises over the rest: log p(t) = logit_t - logsumexp(other logits).
    logits = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])  # [1, 1, V=4]
    ids = torch.tensor([[1]])
    out = selective_log_softmax(logits, ids, suppress=torch.tensor([3]))
    expected = 2.0 - math.log(math.e**1 + math.e**2 + math.e**3)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_tokens_after_first_eos_become_masked_padding(tiny_adapter):
    """Post-processing of generate's output, on fixed model output (rows that run past their EOS)."""
    tok = tiny_adapter.tokenizer
    EOS, PAD = tok.eos_token_id, tok.pad_token_id
    w = tok.convert_tokens_to_ids(["red", "Ġcircle", "Ġleft"])
    raw = torch.tensor(
        [
            [w[0], w[1], EOS, w[2], w[2]],  # EOS in the middle: the tail must go
            [w[0], w[1], w[2], w[0], w[1]],  # cut at the length limit: all valid
            [EOS, w[0], EOS, w[1], w[2]],  # EOS first: only the EOS counts
        ]
    )

    class FixedModel:
        training = True

        def eval(self):
            self.training = False

        def train(self, mode=True):
            self.training = mode

        def generate(self, input_ids, attention_mask, generation_config, **mm):
            assert not self.training  # rollouts run in eval mode
            return torch.cat([input_ids, raw], dim=1)

    model = FixedModel()
    adapter = SimpleNamespace(eos_token_ids=[EOS], pad_token_id=PAD, tokenizer=tok, suppressed_token_ids=[])
    prompts = PromptBatch(torch.full((3, 4), 7), torch.ones(3, 4, dtype=torch.long), {})
    out = generate(model, adapter, prompts, Sampling(max_new_tokens=5))
    assert model.training  # training mode restored
    assert out.completion_ids.tolist() == [
        [w[0], w[1], EOS, PAD, PAD],
        [w[0], w[1], w[2], w[0], w[1]],
        [EOS, PAD, PAD, PAD, PAD],
    ]
    assert out.completion_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert out.texts == ["red circle", "red circle leftred circle", ""]


def test_generate_stops_rows_at_their_first_eos(tiny_adapter, make_image):
    """The real model with an extra EOS id: a token greedy decoding emits mid-row ends that row."""
    a = tiny_adapter
    prompts = _rollout_prompts(a, make_image, G=1)
    # The random model's plain greedy output repeats one token; a huge repetition penalty makes
    # every token of a row new, so the stop token below first appears at position 3 of row 0.
    sampling = Sampling(max_new_tokens=8, do_sample=False, repetition_penalty=1e3)
    greedy = generate(a.model, a, prompts, sampling).completion_ids
    assert greedy.shape[1] == 8
    p = 3
    stop = greedy[0, p].item()
    assert stop not in greedy[0, :p].tolist()
    adapter = SimpleNamespace(eos_token_ids=a.eos_token_ids + [stop], pad_token_id=a.pad_token_id, tokenizer=a.tokenizer, suppressed_token_ids=a.suppressed_token_ids)
    out = generate(a.model, adapter, prompts, sampling)
    for r in range(len(prompts)):
        ref = greedy[r].tolist()
        end = ref.index(stop) if stop in ref else len(ref) - 1  # index of the row's first EOS
        assert out.completion_ids[r, : end + 1].tolist() == ref[: end + 1]
        assert (out.completion_ids[r, end + 1 :] == a.pad_token_id).all()
        assert out.completion_mask[r].tolist() == [1] * (end + 1) + [0] * (out.completion_ids.shape[1] - end - 1)
    assert out.completion_mask[0].sum() == p + 1


def test_generation_config_carries_every_sampling_option(tiny_adapter, make_image, monkeypatch):
    s = Sampling(max_new_tokens=4, do_sample=True, temperature=0.7, top_p=0.9, top_k=5, repetition_penalty=1.3)
    g = generation_config(s, [2, 7], 0)
    assert (g.max_new_tokens, g.do_sample, g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (4, True, 0.7, 0.9, 5, 1.3)
    assert g.eos_token_id == [2, 7] and g.pad_token_id == 0

    a = tiny_adapter
    seen = []
    real_generate = a.model.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["generation_config"])
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(a.model, "generate", spy)
    generate(a.model, a, _rollout_prompts(a, make_image, G=1), s)
    (passed,) = seen
    assert (passed.max_new_tokens, passed.temperature, passed.top_p, passed.top_k, passed.repetition_penalty) == (4, 0.7, 0.9, 5, 1.3)
    assert passed.eos_token_id == a.eos_token_ids and passed.pad_token_id == a.pad_token_id


def test_greedy_generate_is_silent_and_ignores_the_checkpoints_sampling(tiny_adapter, make_image, caplog):
    # Qwen2.5-VL's generation_config.json asks for near-greedy sampling (top_k 1, top_p 0.001,
    # temperature 0.1). Greedy evaluation must neither sample from it nor have transformers warn
    # about unused sampling flags on every call (it did: top_k=0 and min_p=0.0 looked set).
    import logging

    from transformers.utils import logging as hf_logging

    a = tiny_adapter
    prompts = _rollout_prompts(a, make_image, G=1)
    saved = a.model.generation_config.to_dict()
    hf_logging.enable_propagation()
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: start afresh
    try:
        with caplog.at_level(logging.WARNING):
            plain = generate(a.model, a, prompts, Sampling(max_new_tokens=6, do_sample=False)).completion_ids
            a.model.generation_config.update(do_sample=True, top_k=1, top_p=0.001, temperature=0.1)
            again = generate(a.model, a, prompts, Sampling(max_new_tokens=6, do_sample=False)).completion_ids
    finally:
        a.model.generation_config.update(**saved)
        hf_logging.disable_propagation()
    assert torch.equal(again, plain)
    assert not [r for r in caplog.records if "generation flags are not valid" in r.getMessage()]


def test_repetition_penalty_reaches_decoding(tiny_adapter, make_image):
    a = tiny_adapter
    prompts = _rollout_prompts(a, make_image, G=1)
    plain = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=False)).completion_ids
    penalised = generate(a.model, a, prompts, Sampling(max_new_tokens=8, do_sample=False, repetition_penalty=1e3)).completion_ids
    assert any(len(set(r)) < len(r) for r in plain.tolist())  # the random model repeats itself...
    for r, row in enumerate(penalised.tolist()):  # ...but not under a huge penalty
        seen = set(prompts.input_ids[r][prompts.attention_mask[r].bool()].tolist())
        for t in row:
            assert t not in seen
            seen.add(t)


def test_training_logprobs_match_what_generate_sampled_from(tiny_adapter, make_image):
    """The log-probs GRPO trains on must be those of the distribution generate() sampled from.

    Prompts of different lengths (left padding, up to 6 pad tokens) and with 0, 1 and 2 images:
    generate's own per-step scores (temperature 1, no warpers) against one forward over
    prompt + completion, which must agree wherever Qwen's 3-D rotary positions are rebuilt the
    same way in both paths.
    """
    a = tiny_adapter
    problems = ["the red circle", "the blue square please x x x", "find it", "count"]
    prompts = a.encode_prompts(problems, _images(make_image))
    assert (prompts.attention_mask == 0).any(), "the batch must contain left padding"
    cfg = generation_config(Sampling(max_new_tokens=8, do_sample=True), a.eos_token_ids, a.pad_token_id)
    cfg.output_scores, cfg.return_dict_in_generate = True, True
    torch.manual_seed(0)
    with torch.no_grad():
        out = a.model.generate(
            input_ids=prompts.input_ids, attention_mask=prompts.attention_mask, **prompts.mm_inputs, generation_config=cfg
        )
    ids = out.sequences[:, prompts.input_ids.shape[1] :]
    mask = completion_mask(ids, a.eos_token_ids)
    ids = ids.masked_fill(mask == 0, a.pad_token_id)
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores], 1)  # [N, Lc, V]
    expected = sampled.gather(-1, ids.unsqueeze(-1)).squeeze(-1) * mask
    close(_logprobs(a, prompts, ids, mask) * mask, expected)


def test_pixel_bounds_go_into_the_image_processors_size(tiny_dir):
    # transformers deprecates min_pixels / max_pixels as arguments; the bounds live in
    # size = {shortest_edge, longest_edge} (pixels). The tiny base saves 3136 .. 12544.
    both = load_qwen_processor(tiny_dir, min_pixels=1000, max_pixels=6272).image_processor.size
    assert (both.shortest_edge, both.longest_edge) == (1000, 6272)
    one = load_qwen_processor(tiny_dir, max_pixels=6272).image_processor.size
    assert (one.shortest_edge, one.longest_edge) == (3136, 6272)  # the other bound as saved
    saved = load_qwen_processor(tiny_dir).image_processor.size
    assert (saved.shortest_edge, saved.longest_edge) == (3136, 12544)


def test_a_torchvision_that_does_not_import_is_hidden_with_one_warning(tmp_path):
    # PyPI's torchvision wheels are CUDA builds: beside the CPU torch they install but fail to
    # import, and transformers (which only checks that the package exists) then failed at
    # `from transformers import AutoProcessor`. A stand-in package that fails the same way:
    import subprocess
    import sys

    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise OSError("libc10_cuda.so: cannot open shared object file")\n')
    code = (
        "from vlmr1.embedded import BASE_CHECKPOINT\n"
        "from vlmr1.models.loading import load_adapter\n"
        "from PIL import Image\n"
        "a = load_adapter(BASE_CHECKPOINT)\n"
        "p = a.encode_prompts(['the red circle'], [[Image.new('RGB', (112, 112))]])\n"
        "print(type(a.processor).__name__, int(p.attention_mask.sum()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(fake.parent), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["QwenImageOnlyProcessor", "45"]  # the prompt as without torchvision
    warnings = [line for line in run.stderr.splitlines() if "torchvision" in line]
    assert len(warnings) == 1 and "libc10_cuda.so" in warnings[0] and warnings[0].startswith("vlmr1: warning:")
