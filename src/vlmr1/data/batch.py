"""Batches: samples with their images loaded, questions formatted and reward columns gathered."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from ..errors import DataError
from .jsonl import Sample, format_question


def load_images(sample: Sample) -> list[Image.Image]:
    """The sample's images as RGB; one that became unreadable since the load-time check is a DataError."""
    images = []
    for p in sample.images:
        try:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{sample.source}: field 'image': {p}: not readable any more ({e}); was it changed during the run?") from None
    return images


@dataclass
class Batch:
    """Samples ready for the adapter: formatted questions, PIL images, reward columns."""

    samples: list[Sample]
    problems: list[str]  # [B] questions with the task's template applied
    images: list[list[Image.Image]]  # [B] each sample's images, in order
    columns: dict[str, list] = field(default_factory=dict)  # name -> [B] values, passed to every reward


def make_batch(samples: list[Sample], task: str) -> Batch:
    images = [load_images(s) for s in samples]
    columns: dict[str, list] = {
        "solution": [s.solution for s in samples],
        "reward_method": [s.reward_method for s in samples],
        "sample_id": [s.id for s in samples],
        # Original image size (w, h) of the first image: where boxes are scored.
        "image_size": [ims[0].size if ims else None for ims in images],
    }
    keys = sorted({k for s in samples for k in s.extra} - set(columns))
    for k in keys:
        columns[k] = [s.extra.get(k) for s in samples]
    problems = [format_question(task, s.problem) for s in samples]
    return Batch(samples, problems, images, columns)
