"""``length``: cosine-scaled length reward (Yeo et al. 2025, "Demystifying Long Chain-of-Thought
Reasoning in LLMs"), as VLM-R1 uses it.

Correctness comes from the ``accuracy`` dispatcher (a sample is correct when its accuracy is
>= ``CORRECT_THRESHOLD``), so it follows each row's accuracy method, as VLM-R1's cosine reward
does: for detection data, correctness from the detection score needs the rows' method to be a
detection one (``map``, ``od_ap``, ...), in the rows or per file with ``data.reward_methods``. With ``t = min(length / max_length, 1)``::

    r = at_max + 0.5 * (at_0 - at_max) * (1 + cos(pi * t))

which is ``at_0`` at length 0 and ``at_max`` at ``max_length``:
- correct: 1.0 -> 0.5, shorter is better (no reward for padding a right answer);
- wrong: -0.5 -> 0.0, longer is better: a wrong answer after a long attempt is punished less than a
  quick guess, so the policy is pushed to keep thinking when it is unsure rather than to stop early.

Length unit: completion tokens when the ``completion_length`` column is present (the trainer can
pass it), else characters of the completion. The length scale: the ``max_completion_length`` column
(tokens) if present, else ``DEFAULT_MAX_TOKENS``; character lengths are compared against
``CHARS_PER_TOKEN`` times that token budget. A per-sample constant, not the batch maximum, so a
sample's reward does not depend on what else is in its batch.

Departures from VLM-R1 (``grpo_jsonl.cosine_reward``), and why:
- VLM-R1 overwrites the accuracy with ``acc_reward = 1.0`` before testing it, so every completion is
  scored as correct and the reward only says "be short"; here correctness is real;
- VLM-R1's correctness threshold is 0.7 (never reached, given the bug above); ours is 0.5, the
  Acc@0.5 hit criterion of REC (``grounding.IOU_THRESHOLD``) for the continuous-IoU ``rec`` rows and
  indifferent for the 0/1 text rewards;
- VLM-R1 does not clamp ``length / max_length``: past the limit the cosine rises again (2 * L tokens
  scores like 0). We clamp at 1, so every length >= L gets the value at L;
- VLM-R1 tokenises the completion inside the reward with a global tokenizer; we take the trainer's
  token count or count characters, keeping the reward a pure function of its columns.
The paper uses the same shape with other values and adds a penalty for exceeding L; the values
here are VLM-R1's.
"""

from __future__ import annotations

import math

from .accuracy import accuracy_reward
from .grounding import IOU_THRESHOLD
from .registry import register

CORRECT_THRESHOLD = IOU_THRESHOLD
"""Accuracy at or above which a completion counts as correct (0.5)."""

DEFAULT_MAX_TOKENS = 1024
"""Length scale in tokens when no ``max_completion_length`` column is given (VLM-R1's ``cosine_max_len``)."""

CHARS_PER_TOKEN = 4
"""Characters per token assumed when lengths are counted in characters (a common BPE average for English)."""


def cosine_scaled(
    length: float,
    max_length: float,
    correct: bool,
    *,
    correct_at_0: float = 1.0,
    correct_at_max: float = 0.5,
    wrong_at_0: float = -0.5,
    wrong_at_max: float = 0.0,
) -> float:
    """Reward of a completion of ``length`` out of ``max_length``.

    ``*_at_0`` at length 0, ``*_at_max`` from ``max_length`` on; ``correct`` picks the pair.
    """
    if not (math.isfinite(length) and length >= 0):
        raise ValueError(f"length must be a finite number >= 0, got {length!r}")
    if not (math.isfinite(max_length) and max_length > 0):
        raise ValueError(f"max_length must be a finite number > 0, got {max_length!r}")
    at_0, at_max = (correct_at_0, correct_at_max) if correct else (wrong_at_0, wrong_at_max)
    t = min(length / max_length, 1.0)  # clamped: past the limit the cosine would turn back up
    return at_max + 0.5 * (at_0 - at_max) * (1.0 + math.cos(math.pi * t))


def _length_and_scale(i: int, text: str, completion_length, max_completion_length) -> tuple[float, float]:
    budget = DEFAULT_MAX_TOKENS
    if max_completion_length is not None and max_completion_length[i] is not None:
        budget = float(max_completion_length[i])
    if completion_length is not None and completion_length[i] is not None:
        return float(completion_length[i]), budget  # tokens against a token budget
    return float(len(text)), CHARS_PER_TOKEN * budget  # characters against the same budget in characters


@register("length")
def length_reward(
    completions: list[str], solution: list, completion_length=None, max_completion_length=None, **columns
) -> list[float | None]:
    """Cosine length reward per completion; None where ``accuracy`` is None (not applicable)."""
    acc = accuracy_reward(completions, solution, **columns)
    out: list[float | None] = []
    for i, (text, a) in enumerate(zip(completions, acc, strict=True)):
        if a is None:
            out.append(None)
            continue
        length, scale = _length_and_scale(i, text, completion_length, max_completion_length)
        out.append(cosine_scaled(length, scale, a >= CORRECT_THRESHOLD))
    return out
