"""NoisyRollout (Liu et al., arXiv 2504.13055): sample the rollouts from a lightly noised copy of
each image and compute every log-prob (old, reference, policy) on the clean image.

The policy then learns from answers found while looking at a perturbed view, which the paper
shows widens exploration for vision-language RL at no extra rollout cost. Noise here is Gaussian
pixel noise of ``std`` (0-255 scale), clipped to the valid range, drawn from the step's sampling
seed so that a resumed step sees the same noise.

Departures from the paper: it mixes clean and noised rollouts in each group and anneals the
noise strength to zero over training; here every rollout of a step uses the noised image at a
constant ``rollout.noise_std``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def noised(images: list[list[Image.Image]], std: float, seed: int) -> list[list[Image.Image]]:
    """Copies of ``images`` (per prompt, per image) with N(0, std^2) noise per pixel and channel, clipped to 0..255."""
    rng = np.random.default_rng(seed)
    out = []
    for prompt_images in images:
        row = []
        for im in prompt_images:
            pixels = np.asarray(im.convert("RGB"), dtype=np.float64)
            noisy = np.clip(np.rint(pixels + rng.normal(0.0, std, pixels.shape)), 0, 255).astype(np.uint8)
            row.append(Image.fromarray(noisy, "RGB"))
        out.append(row)
    return out
