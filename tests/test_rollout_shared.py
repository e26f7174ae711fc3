"""Prefill-once rollouts sample exactly what ``generate`` samples on the repeated prompts."""

import pytest
import torch

from vlmr1.rl.rollout import Sampling, generate, generate_shared, prompt_rows

PROBLEMS = ["Red?", "<image>Where is the green square?", "Before: <image> After: <image> Same?", "Count the shapes."]


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(max_new_tokens=12, do_sample=True, temperature=0.9),
        Sampling(max_new_tokens=12, do_sample=True, temperature=1.3, top_p=0.9, top_k=50, repetition_penalty=1.1),
        Sampling(max_new_tokens=1, do_sample=True),  # a single token: prefill logits only
    ],
    ids=["temperature", "all-filters", "one-token"],
)
@pytest.mark.parametrize("G", [1, 3])
def test_same_seed_same_samples_as_generate_on_repeated_prompts(tiny_adapter, make_image, sampling, G):
    # Left-padded prompts of different lengths with 0, 1 and 2 images (the text-only ones first
    # and last), each sampled G times.
    a = tiny_adapter
    images = [[], [make_image(11, (150, 90))], [make_image(12), make_image(13, (84, 140))], []]
    prompts = a.encode_prompts(PROBLEMS, images)
    torch.manual_seed(7)
    expected = generate(a.model, a, a.repeat_prompts(prompts, G), sampling)
    torch.manual_seed(7)
    got = generate_shared(a.model, a, prompts, G, sampling)
    assert torch.equal(got.completion_ids, expected.completion_ids)
    assert torch.equal(got.completion_mask, expected.completion_mask)
    assert got.texts == expected.texts
    # The rollout keeps each prompt once; its rows, rebuilt for any range, are generate's repeated input.
    assert got.group_size == G and torch.equal(got.prompts.input_ids, prompts.input_ids)
    N = len(PROBLEMS) * G
    for start, stop in [(0, N), (1, N - 1), (G - 1, G + 1)]:
        rows = prompt_rows(a, got, start, stop)
        assert torch.equal(rows.input_ids, expected.prompts.input_ids[start:stop])
        assert rows.input_sizes == expected.prompts.input_sizes[start:stop]
        want = a.slice_prompts(expected.prompts, start, stop).mm_inputs
        assert rows.mm_inputs.keys() == want.keys()
        assert all(torch.equal(rows.mm_inputs[k], want[k]) for k in want)


def test_shared_rollouts_refuse_greedy_decoding(tiny_adapter):
    prompts = tiny_adapter.encode_prompts(["Red?"], [[]])
    with pytest.raises(ValueError, match="greedy"):
        generate_shared(tiny_adapter.model, tiny_adapter, prompts, 2, Sampling(max_new_tokens=4, do_sample=False))
