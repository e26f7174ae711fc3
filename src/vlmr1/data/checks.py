"""Load-time checks of a row beyond its JSON shape: its images, its reward method, its solution.

``RowChecker`` runs on every row while the data loads, before any model does, so a row that
would fail (or, worse, silently score 0) mid-training is reported with its file and line, or
counted and skipped under ``data.on_error=skip``:

- each image is opened and fully decoded (a truncated or corrupt file fails here, not in step
  900), its pixel count held to ``data.max_image_pixels`` (decompression bombs) and its aspect
  ratio to ``MAX_ASPECT_RATIO``;
- the row's accuracy method is a registered reward;
- the solution is read by the ground-truth check of that method's reward, and of every
  configured training reward that has one (a box must be four finite numbers with x1 < x2,
  y1 < y2, inside the image; detection ground truth a list of boxes with labels; math, MCQ and
  yes/no answers present and of their kind).

The same readers score the rows later, so what passes here scores.
"""

from __future__ import annotations

from PIL import Image

from ..errors import DataError
from ..rewards.accuracy import DEFAULT_METHOD, method_reward
from ..rewards.registry import truth_check
from .jsonl import Sample, format_question

MAX_ASPECT_RATIO = 200
"""Longest over shortest image side that every family takes: Qwen2-VL / 2.5-VL / 3-VL's resize
refuses more elongated images (InternVL's tiling would take them)."""

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""PIL's own limit (Image.MAX_IMAGE_PIXELS), the default of ``data.max_image_pixels``."""


class RowChecker:
    """Callable check of one ``Sample`` (``load_samples(check=...)``); sets ``sample.image_sizes``.

    ``rewards``: configured training rewards; those with a ground-truth check are run on every
    row too, since every row is scored by each of them. Image sizes are remembered per path:
    rows often share an image (RefCOCO has several expressions per picture)."""

    def __init__(self, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, rewards: list[str] | tuple[str, ...] = ()):
        self.max_image_pixels = max_image_pixels
        self.rewards = tuple(rewards)
        self._sizes: dict[str, tuple[int, int]] = {}
        # PIL refuses images above twice its own limit on open; a user who raised ours means it.
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_image_pixels)

    def __call__(self, sample: Sample) -> None:
        sample.image_sizes = [self.image_size(p, sample.source) for p in sample.images]
        method = sample.reward_method if sample.reward_method is not None else DEFAULT_METHOD
        try:
            names = [method_reward(method)]
        except ValueError as e:
            raise DataError(f"{sample.source}: field 'accu_reward_method': {e}", "unknown reward method") from None
        size = sample.image_sizes[0] if sample.image_sizes else None  # boxes are scored in the first image
        for name in dict.fromkeys(names + list(self.rewards)):
            check = truth_check(name)
            if check is None:
                continue
            try:
                check(sample.solution, size)
            except ValueError as e:
                raise DataError(
                    f"{sample.source}: field 'conversations' (the gpt turn, the solution) for reward {name!r}: {e}",
                    "bad solution",
                ) from None

    def image_size(self, path: str, where: str) -> tuple[int, int]:
        if path in self._sizes:
            return self._sizes[path]
        field = f"{where}: field 'image': {path}"
        try:
            with Image.open(path) as im:
                w, h = im.size
                if w * h > self.max_image_pixels:
                    raise DataError(
                        f"{field}: {w}x{h} = {w * h:,} pixels is above data.max_image_pixels={self.max_image_pixels:,} "
                        "(a guard against decompression bombs); shrink the image or raise the limit",
                        "image too large",
                    )
                if min(w, h) < 1 or max(w, h) > MAX_ASPECT_RATIO * min(w, h):
                    raise DataError(
                        f"{field}: {w}x{h} has an aspect ratio above {MAX_ASPECT_RATIO}, which the image processor refuses; "
                        "crop or pad it",
                        "extreme aspect ratio",
                    )
                im.load()  # the whole file decoded: truncation shows here
        except DataError:
            raise
        except Image.DecompressionBombError as e:
            raise DataError(f"{field}: {e}; raise data.max_image_pixels if the image is genuine", "image too large") from None
        except (OSError, SyntaxError, ValueError) as e:  # PIL's errors for unreadable, truncated, corrupt files
            raise DataError(f"{field}: not a readable image ({e})", "unreadable image") from None
        self._sizes[path] = (w, h)
        return w, h


def context_length(model) -> int | None:
    """The language model's context (``max_position_embeddings``), None where the config has none."""
    config = model.config
    text = getattr(config, "text_config", None) or config
    return getattr(text, "max_position_embeddings", None)


def prompt_limit(model, max_prompt_length: int | None, max_new_tokens: int) -> tuple[int | None, str]:
    """The longest prompt allowed, and the settings it comes from (for the error message)."""
    limits = []
    if max_prompt_length is not None:
        limits.append((max_prompt_length, f"data.max_prompt_length={max_prompt_length}"))
    ctx = context_length(model)
    if ctx is not None:
        limits.append((ctx - max_new_tokens, f"the model's context {ctx} less {max_new_tokens} new tokens"))
    return min(limits) if limits else (None, "")


def long_prompts(adapter, samples: list[Sample], task: str, limit: int, why: str) -> list[tuple[Sample, DataError]]:
    """(sample, DataError) for each sample whose prompt (``task``'s template applied, image tokens counted
    from the checked image sizes) is longer than ``limit`` tokens, in sample order."""
    errors = []
    for start in range(0, len(samples), 256):
        chunk = samples[start : start + 256]
        lengths = adapter.prompt_lengths([format_question(task, s.problem) for s in chunk], [s.image_sizes for s in chunk])
        for s, n in zip(chunk, lengths):
            if n > limit:
                errors.append((s, DataError(
                    f"{s.source}: the prompt is {n} tokens (images included), above {limit} ({why}); shorten the "
                    "question, lower model.max_pixels (fewer image tokens) or raise the limit",
                    "prompt too long",
                )))
    return errors
