"""Shared-prompt log-probs (vlmr1.rl.shared_prompt) against the plain repeated forward.

The reference is what the trainer computes today: ``completion_logprobs`` on
``adapter.repeat_prompts(prompts, G)``. Everything runs in fp32 on the tiny Qwen2.5-VL.
"""

import pytest
import tiny_families
import torch

from vlmr1.models.loading import load_adapter
from vlmr1.rl.logprobs import completion_logprobs
from vlmr1.rl.shared_prompt import prefill, prompt_positions, shared_prompt_logprobs

ATOL = 1e-5  # log-probs, max abs over valid tokens (observed <= 3.4e-6)

LONG = "Please provide the bounding box coordinate of the region this sentence describes: the green square."
# Each batch: (problem, image sizes) per prompt. Different prompt lengths -> left padding.
BATCHES = {
    # 1 image, 1 image of another size, 2 images, no image: text-only rows get mrope positions too.
    "mixed": [
        ("Red?", [(112, 112)]),
        (LONG, [(150, 90)]),
        ("Which has more shapes?", [(112, 112), (84, 140)]),
        ("Count.", []),
    ],
    # No image at all: the plain forward numbers positions through the padding (see module docstring).
    "text_only": [("Red?", []), (LONG, [])],
    "two_images": [("Compare the two images.", [(112, 112), (56, 56)])],
}


def encode(adapter, make_image, batch):
    problems = [p for p, _ in batch]
    images = [[make_image(10 * i + k, size) for k, size in enumerate(sizes)] for i, (_, sizes) in enumerate(batch)]
    return adapter.encode_prompts(problems, images)


def random_completions(adapter, rows: int, width: int, seed: int):
    """Right-padded random completions [rows, width] of 1..width tokens (never vision tokens) and their mask."""
    g = torch.Generator().manual_seed(seed)
    banned = set(adapter.suppressed_token_ids) | {adapter.pad_token_id}
    pool = torch.tensor([i for i in range(adapter.model.config.text_config.vocab_size) if i not in banned])
    ids = pool[torch.randint(len(pool), (rows, width), generator=g)]
    lengths = torch.randint(1, width + 1, (rows,), generator=g)
    lengths[0], lengths[-1] = 1, width  # a one-token completion and a full-width one in every batch
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, adapter.pad_token_id), mask


def plain_logprobs(adapter, prompts, ids, mask, G, temperature=1.0):
    inputs = adapter.sequence_inputs(adapter.repeat_prompts(prompts, G), ids, mask)
    return completion_logprobs(adapter.model, inputs, ids, temperature, adapter.suppressed_token_ids)


def shared_logprobs(adapter, prompts, ids, mask, G, temperature=1.0):
    return shared_prompt_logprobs(adapter.model, adapter, prompts, ids, mask, G, temperature, adapter.suppressed_token_ids)


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("G", [1, 2, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_the_repeated_forward(tiny_adapter, make_image, batch, G, temperature):
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES[batch])
    if len(prompts) > 1:  # prompts of different lengths, padded on the left
        assert len(set(prompts.attention_mask.sum(1).tolist())) == len(prompts)
        assert prompts.attention_mask[:, 0].min() == 0
    ids, mask = random_completions(a, len(prompts) * G, 6, seed=G)
    with torch.no_grad():
        expected = plain_logprobs(a, prompts, ids, mask, G, temperature)
        actual = shared_logprobs(a, prompts, ids, mask, G, temperature)
    assert actual.shape == ids.shape
    valid = mask.bool()
    assert (actual[valid] - expected[valid]).abs().max() <= ATOL
    assert actual[valid].max() < 0  # real log-probs, not a constant that would match anything


@pytest.mark.parametrize("width", [1, 2])
def test_one_and_two_token_completions(tiny_adapter, make_image, width):
    # width 1: the only log-prob comes from the prompt forward's last position (no completion forward).
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    ids, mask = random_completions(a, 4 * 3, width, seed=7)
    with torch.no_grad():
        expected = plain_logprobs(a, prompts, ids, mask, 3)
        actual = shared_logprobs(a, prompts, ids, mask, 3)
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= ATOL


def test_masked_tokens_inside_a_completion_do_not_advance_positions(tiny_adapter, make_image):
    # Tokens 1-2 of every row masked out: the model numbers only attended tokens, so token 3
    # sits right after token 0 (positions n, n+1), and token 4's log-prob (read at token 3)
    # depends on that distance. Token 3's own log-prob is read at masked token 2, whose output
    # is undefined in both paths: only tokens whose predecessor is attended are compared.
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    ids, _ = random_completions(a, 8, 5, seed=5)
    mask = torch.tensor([[1, 0, 0, 1, 1]] * 8)
    with torch.no_grad():
        expected = plain_logprobs(a, prompts, ids, mask, 2)
        actual = shared_logprobs(a, prompts, ids, mask, 2)
    compared = torch.tensor([True, False, False, False, True])
    assert (actual[:, compared] - expected[:, compared]).abs().max() <= ATOL


@pytest.mark.parametrize("G", [1, 2, 4])
def test_gradients_equal_the_repeated_forward(tiny_adapter, make_image, G):
    """d/dtheta sum(logp * mask * w) through both paths: the G rows' gradients meet in the one prompt forward.

    Tolerance: the two sums differ only in fp32 rounding order. Observed worst over all parameters
    (G = 1, 2, 4; 3 seeds): relative norm error 2.0e-6, max |diff| / max |grad| 3.2e-6 (embedding
    rows, gradients up to 28). The plain path against itself, split into 4 micro-batches, differs
    by 1.7e-6 and 2.5e-6: the same floor. (In float64 the G = 1 gradients agree to 1e-15; G > 1 to
    1e-7, because Qwen's RMSNorm computes in float32 whatever the model dtype.)
    """
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    ids, mask = random_completions(a, 4 * G, 6, seed=G)
    weights = torch.rand(ids.shape, generator=torch.Generator().manual_seed(G))
    names, params = zip(*a.model.named_parameters())
    # autograd.grad leaves .grad untouched: the shared model stays as it was.
    expected = torch.autograd.grad((plain_logprobs(a, prompts, ids, mask, G, 0.7) * mask * weights).sum(), params)
    actual = torch.autograd.grad((shared_logprobs(a, prompts, ids, mask, G, 0.7) * mask * weights).sum(), params)
    for name, e, x in zip(names, expected, actual):
        assert (x - e).norm() <= 1e-5 * e.norm(), name
        torch.testing.assert_close(x, e, rtol=1e-4, atol=1e-5 * e.abs().max().item(), msg=name)
    # The vision tower gets its gradient through the expanded cache (a detached cache gives 0 here).
    vision = [x for n, x in zip(names, actual) if n.startswith(a.vision_prefix)]
    assert vision and all(x.abs().max() > 0 for x in vision)


def test_uneven_group_sizes_match_each_prompt_repeated(tiny_adapter, make_image):
    # A micro-batch that cuts through groups: prompt 0 keeps 3 rows, 1 keeps 1, 2 keeps 2, 3 keeps 1.
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    counts = [3, 1, 2, 1]
    ids, mask = random_completions(a, sum(counts), 5, seed=3)
    with torch.no_grad():
        actual = shared_prompt_logprobs(a.model, a, prompts, ids, mask, counts)
        rows = torch.tensor(counts).cumsum(0).tolist()  # [3, 4, 6, 7]: end row of each prompt
        expected = []
        for i, (lo, hi) in enumerate(zip([0] + rows[:-1], rows)):
            one = a.slice_prompts(prompts, i, i + 1)
            inputs = a.sequence_inputs(a.repeat_prompts(one, hi - lo), ids[lo:hi], mask[lo:hi])
            expected.append(completion_logprobs(a.model, inputs, ids[lo:hi]))
    expected = torch.cat(expected)
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= ATOL


@pytest.mark.parametrize(
    "sizes, image_tokens, delta",
    [
        ([], 0, 0),  # text only: positions 0..n-1, completion starts at n
        # 112 px: 8 x 8 patches of 14 px, merged 2 x 2 -> 4 x 4 = 16 tokens that advance the text
        # position by max(4, 4) = 4 only: delta = 4 - 16 = -12.
        ([(112, 112)], 16, -12),
        # 150 x 90 resizes to 140 x 84 (multiples of 28): 10 x 6 patches -> 5 x 3 = 15 tokens,
        # advancing by max(5, 3) = 5: delta = 5 - 15 = -10.
        ([(150, 90)], 15, -10),
        ([(112, 112), (150, 90)], 31, -22),  # -12 + -10
    ],
)
def test_completion_positions_continue_after_the_images(tiny_adapter, make_image, sizes, image_tokens, delta):
    a = tiny_adapter
    # A second, longer text-only prompt pads this one on the left: padding must not count.
    prompts = encode(a, make_image, [("Red?", sizes), (LONG + " " + LONG, [])])
    assert int((prompts.mm_inputs["mm_token_type_ids"][0] == 1).sum()) == image_tokens
    empty = prompts.input_ids.new_zeros(2, 0)
    positions, next_position, mrope = prompt_positions(a.model, a.sequence_inputs(prompts, empty, empty))
    real = prompts.attention_mask.sum(1)
    assert mrope and positions.shape == (3, 2, prompts.input_ids.shape[1])
    assert next_position.tolist() == [int(real[0]) + delta, int(real[1])]
    # The first completion token follows the largest prompt position in every row.
    assert next_position.tolist() == (positions.amax(dim=(0, 2)) + 1).tolist()


def test_model_rope_deltas_are_neither_read_nor_written(tiny_adapter, make_image, monkeypatch):
    # Qwen keeps the last call's rope_deltas on the model for incremental decoding; a stale
    # value (wrong rows, absurd offsets) must change nothing, and the value must stay untouched.
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    ids, mask = random_completions(a, 8, 5, seed=1)
    with torch.no_grad():
        expected = plain_logprobs(a, prompts, ids, mask, 2)
        stale = torch.full((3, 1), 1000)
        monkeypatch.setattr(a.model.model, "rope_deltas", stale)
        actual = shared_logprobs(a, prompts, ids, mask, 2)
    assert a.model.model.rope_deltas is stale
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= ATOL


def test_prefill_expands_one_prompt_forward_to_every_row(tiny_adapter, make_image):
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["mixed"])
    with torch.no_grad():
        pre = prefill(a.model, a, prompts, 3)
    Lp = prompts.input_ids.shape[1]
    assert pre.first_logits.shape[:2] == (12, 1) and pre.cache.get_seq_length() == Lp
    assert torch.equal(pre.attention_mask, prompts.attention_mask.repeat_interleave(3, 0))
    # Rows 0-2 are prompt 0's copies: identical cache rows and first-token logits.
    keys = pre.cache.layers[0].keys  # [12, kv_heads, Lp, head_dim]
    assert torch.equal(keys[0], keys[2]) and not torch.equal(keys[2], keys[3])
    assert torch.equal(pre.first_logits[0], pre.first_logits[2])


def test_mismatched_rows_are_rejected(tiny_adapter, make_image):
    a = tiny_adapter
    prompts = encode(a, make_image, BATCHES["text_only"])  # 2 prompts
    ids, mask = random_completions(a, 5, 3, seed=0)
    with torch.no_grad():
        with pytest.raises(ValueError, match="5 completion rows for 4 prompt rows"):
            shared_prompt_logprobs(a.model, a, prompts, ids, mask, 2)
        with pytest.raises(ValueError, match="at least one row"):
            shared_prompt_logprobs(a.model, a, prompts, ids, mask, [5])
        with pytest.raises(ValueError, match="at least one row"):
            shared_prompt_logprobs(a.model, a, prompts, ids, mask, [5, 0])


def test_gradient_checkpointing_is_refused_not_silently_wrong(tiny_dir, make_image):
    # Checkpointed layers drop the cache while training: completions would lose their prompt.
    a = load_adapter(tiny_dir)
    a.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    a.model.train()
    prompts = encode(a, make_image, BATCHES["two_images"])
    ids, mask = random_completions(a, 2, 3, seed=0)
    with pytest.raises(RuntimeError, match="gradient checkpointing"):
        shared_prompt_logprobs(a.model, a, prompts, ids, mask, 2)


@pytest.mark.parametrize("family, side", [("qwen2_vl", 112), ("qwen3_vl", 128), ("internvl", 112)])
def test_other_model_families(tmp_path, make_image, family, side):
    # Qwen2-VL and Qwen3-VL (interleaved mrope, DeepStack) take mrope positions from their own
    # get_rope_index; InternVL has none and takes 1-D positions that skip the padding.
    a = load_adapter(getattr(tiny_families, f"build_tiny_{family}")(tmp_path))
    a.model.eval()
    batch = [("Red?", [(side, side)]), (LONG, [(side, side), (side, side)]), ("Count.", [])]
    prompts = encode(a, make_image, batch)
    ids, mask = random_completions(a, 3 * 2, 5, seed=2)
    with torch.no_grad():
        expected = plain_logprobs(a, prompts, ids, mask, 2, 0.7)
        actual = shared_logprobs(a, prompts, ids, mask, 2, 0.7)
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= ATOL
