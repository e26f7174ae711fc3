"""Format rewards: did the completion follow the requested output layout?

- ``format``: the R1 layout, ``<think>...</think>`` then ``<answer>...</answer>`` and nothing else.
  Unlike VLM-R1's regex alone (which a completion with a second ``<answer>`` nested inside the
  first still satisfies, because ``.*?`` spans tags), each of the four tags must appear exactly once.
  Whitespace is allowed before, between and after the blocks; VLM-R1's ``^...$`` allows it only
  between them, so a completion ending in a newline failed its format for no reason.
- ``answer_format``: exactly one ``<answer>...</answer>`` whose content parses as a box. The tiny
  offline model answers without a think block, so this is the format reward it trains with.
- ``box_format``: the completion is a bare box ``[x1, y1, x2, y2]`` and nothing else: the answer
  layout of the embedded tiny model, which skips tags to keep completions short.
- ``rec_format``: VLM-R1's REC format reward (``format_reward_rec``): the ``format`` layout, and the
  answer holds a box inside a JSON-like object, ``{... [x1, y1, x2, y2] ...}`` (Qwen2.5-VL's
  ``[{"bbox_2d": [...], "label": ...}]``). Under ``format`` alone an empty answer, or one with no
  box, earns the full format reward. Departures from VLM-R1, and why: the layout is ``format``'s
  (each tag once, nothing before ``<think>`` or after ``</answer>``), where VLM-R1 searches for
  the pattern anywhere; the box numbers are read as ``iou`` reads them (floats, signs, free
  spacing), where VLM-R1 requires integers without spaces before the commas, so the format never
  pays a box the accuracy reward cannot read, nor refuses one it can.
"""

from __future__ import annotations

import re

from .grounding import BOX_PATTERN, parse_box
from .registry import register

_THINK_ANSWER_RE = re.compile(r"^\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$", re.DOTALL)
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BARE_BOX_RE = re.compile(r"^\s*\[\s*(?:[-+]?\d+(?:\.\d+)?\s*,\s*){3}[-+]?\d+(?:\.\d+)?\s*\]\s*$")
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_BOX_IN_OBJECT_RE = re.compile(r"\{.*" + BOX_PATTERN + r".*\}", re.DOTALL)


def _think_answer_ok(text: str) -> bool:
    return bool(_THINK_ANSWER_RE.match(text)) and all(text.count(tag) == 1 for tag in _TAGS)


def _single_box_answer_ok(text: str) -> bool:
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False
    m = _ANSWER_RE.search(text)  # None when </answer> comes before <answer>
    return m is not None and parse_box(m.group(1)) is not None


@register("format")
def format_reward(completions: list[str], **_) -> list[float]:
    """1.0 for exactly ``<think>...</think> <answer>...</answer>`` (whitespace around allowed), else 0.0."""
    return [float(_think_answer_ok(c)) for c in completions]


@register("answer_format")
def answer_format_reward(completions: list[str], **_) -> list[float]:
    """1.0 if there is exactly one ``<answer>...</answer>`` and its content holds a box, else 0.0."""
    return [float(_single_box_answer_ok(c)) for c in completions]


@register("box_format")
def box_format_reward(completions: list[str], **_) -> list[float]:
    """1.0 if the whole completion is one box ``[x1, y1, x2, y2]`` (whitespace allowed), else 0.0."""
    return [float(bool(_BARE_BOX_RE.match(c))) for c in completions]


@register("rec_format")
def rec_format_reward(completions: list[str], **_) -> list[float]:
    """1.0 for the ``format`` layout whose answer holds ``{... [x1, y1, x2, y2] ...}``, else 0.0 (VLM-R1's REC format)."""
    return [float(_think_answer_ok(c) and bool(_BOX_IN_OBJECT_RE.search(_ANSWER_RE.search(c).group(1)))) for c in completions]
