"""Repetition penalty: ``repetition`` = -(repeated fraction) in [-1, 0], to add with a positive weight.

- Detection answer (``parse_detections`` gives a non-empty list): the duplicate-box rate, the fraction
  of predicted boxes that repeat an earlier one: same label and IoU >= DUPLICATE_IOU, or the very same
  coordinates (which also catches repeated zero-area or invalid boxes, whose IoU is 0).
- Anything else: n-gram repetition of the whole completion (think block included: that is where
  degenerate loops happen), 1 - distinct / total n-grams over lower-cased whitespace tokens, n = NGRAM.
  Fewer than NGRAM tokens (or an empty completion): no penalty.

Departures from VLM-R1's ``repetition_reward`` (grpo_jsonl.py), and why:
- VLM-R1 counts a box as repeated only when ``f"{bbox_2d}_{label}"`` is character-for-character equal
  to an earlier one, so a loop that shifts a coordinate by one pixel escapes. Here near-duplicates
  (IoU >= 0.9, same label) count too; labels are normalised like the detection rewards do.
- VLM-R1 looks for JSON in a fence, then any fence, then a bare array (repairing broken JSON with
  json_repair); here the answer is read by the same parser as the detection rewards, so the two never
  disagree on what the boxes are.
- Text n-grams: n = 3 (VLM-R1: 6). With 6-grams a loop must repeat a whole 6-word phrase to register;
  3-grams catch shorter stutters. Long natural text has some repeated 3-grams, so keep the weight small.
"""

from __future__ import annotations

from .detection import Detection, parse_detections
from .grounding import iou
from .registry import register

DUPLICATE_IOU = 0.9
"""Two boxes with the same label and IoU >= this are one object listed twice."""

NGRAM = 3
"""Length, in whitespace tokens, of the n-grams of the text penalty."""


def duplicate_box_rate(dets: list[Detection]) -> float:
    """Fraction of boxes that duplicate an earlier one (same label, same coordinates or IoU >= DUPLICATE_IOU)."""
    if not dets:
        return 0.0
    dups = sum(
        any(e.label == d.label and (e.box == d.box or iou(e.box, d.box) >= DUPLICATE_IOU) for e in dets[:k])
        for k, d in enumerate(dets)
    )
    return dups / len(dets)


def ngram_repetition(text: str, n: int = NGRAM) -> float:
    """1 - distinct / total word n-grams of ``text`` (lower-cased); 0 when it has fewer than ``n`` words."""
    words = text.lower().split()
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def repetition_penalty(text: str) -> float:
    """Duplicate-box rate for a detection answer, else the n-gram repetition of the text; in [0, 1)."""
    dets = parse_detections(text)
    return duplicate_box_rate(dets) if dets else ngram_repetition(text)


@register("repetition")
def repetition_reward(completions: list[str], **_) -> list[float]:
    """-repetition_penalty per completion, in (-1, 0]: 0 for no repetition."""
    return [0.0 - repetition_penalty(c) for c in completions]
