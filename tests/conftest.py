"""Shared fixtures: the tiny random Qwen2.5-VL, built once per session, and deterministic images."""

import os

# Nothing may reach a model hub: every model and tokenizer in the tests is built locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

# The models here are tiny: one thread is fastest, and on a shared machine several OpenMP
# threads contending with other processes make each op tens of times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Folder holding the tiny model, tokenizer and processor in HF format (seed 0). Read-only for tests."""
    from vlmr1.models.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_dir):
    """The Qwen adapter on the tiny model, in eval mode. Tests must not train or modify it."""
    from vlmr1.models.loading import load_adapter

    adapter = load_adapter(tiny_dir)
    adapter.model.eval()
    return adapter


def random_image(seed: int, size: tuple[int, int] = (112, 112)) -> Image.Image:
    """RGB noise image, the same for the same seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def make_image():
    """``make_image(seed, size=(w, h))``: a deterministic noise image."""
    return random_image
