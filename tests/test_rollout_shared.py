"""Prefill-once rollouts sample exactly what ``generate`` samples on the repeated prompts."""

import pytest
import torch

from vlmr1.rl.rollout import Sampling, generate, generate_shared

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
    assert torch.equal(got.prompts.input_ids, expected.prompts.input_ids)  # rows stay the repeated prompts
    assert got.prompts.input_sizes == expected.prompts.input_sizes


def test_shared_rollouts_refuse_greedy_decoding(tiny_adapter):
    prompts = tiny_adapter.encode_prompts(["Red?"], [[]])
    with pytest.raises(ValueError, match="greedy"):
        generate_shared(tiny_adapter.model, tiny_adapter, prompts, 2, Sampling(max_new_tokens=4, do_sample=False))
