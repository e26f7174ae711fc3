"""Answer-accuracy rewards for math and text questions: 1.0 right, 0.0 wrong.

The prediction's answer is ``grounding.answer_content`` (the LAST ``<answer>...</answer>``, else the
whole text); the solution may be wrapped in ``<answer>...</answer>`` too, or be a bare number.

- ``default``: math-verify (``verify(gold, pred)``), then two fallbacks: equal bare numbers, then
  equal normalised text (``normalize_text``).
- ``mcq``: the choice letter of the prediction equals the solution's (``extract_choice``).
- ``yes_no``: the prediction says exactly one of the whole words yes / no, the same as the solution.
- ``all_match``: equal normalised text.

A solution these rules cannot read (empty, no letter for ``mcq``, not yes/no for ``yes_no``, not a
string or a number) is a data bug: ValueError naming the sample.

math-verify (0.9) notes, read from its source:
- ``parse`` with the default extraction config reads plain text and LaTeX: "3", "$3$", "3 objects",
  "\\frac{1}{2}" and "\\boxed{2}" all parse; words ("cat", "yes", "B") give ``[]``. From free text
  it takes the LAST number, so a hedge like "3 or 4" scores as "4": a known leniency we keep.
- ``verify`` is not symmetric: the gold answer goes first.
- Both functions time out through ``signal.alarm``, which raises ValueError off the main thread.
  On the main thread we keep the timeout (``MATH_VERIFY_TIMEOUT_S``): sympy can hang for minutes on
  a power tower such as ``9^{9^{9^9}}``. Off the main thread we pass ``None`` (no timeout), as
  math-verify's own error message advises; such an input can then block that thread.
- Any exception inside math-verify counts as "no verdict" and the fallbacks decide.

Departures from VLM-R1 (``grpo_jsonl.py``), and why:
- ``default`` calls ``verify(parse(pred), parse(gold))``, gold second; we pass gold first, the order
  math-verify documents (it matters for assignments and equation/interval conversions).
- ``default`` falls back to the Levenshtein ratio (partial credit for a near-miss string: "red cat"
  for "red car" earns 0.86) and to choice letters; ours stays binary and leaves letters to ``mcq``.
  Its numeric fallback compares with ``float ==``; ours with a 1e-6 relative tolerance and only for
  bare numbers ("3", "$3.0$", "1,000"), so "not 3" never passes as 3 through it.
- The fallbacks run whenever math-verify does not say "equal", not only when a side fails to
  parse: they only pay identical numbers or identical normalised strings, which cannot be wrong.
- VLM-R1 reads the FIRST ``<answer>`` of the solution without DOTALL; we read the last, across lines.
- ``yes_no`` searched ``(yes|no)`` as substrings, so "eyes" read as yes and "nose"/"not" as no,
  and a prediction with neither matched a solution with neither (both "") for 1.0. We match
  whole words, require exactly one of them, and reject a solution that is neither.
- ``mcq``: VLM-R1's ``extract_choice`` only takes a capital followed by punctuation or the end, so
  "B because ..." names no choice, and it ranks several candidates by keywords around the FIRST
  occurrence of each letter anywhere in the upper-cased text. Ours: ordered rules, see ``extract_choice``.
- ``all_match`` kept newlines as spaces only after some, and removed every trailing period;
  we collapse all whitespace and remove one trailing period.
"""

from __future__ import annotations

import math
import re
import threading

from math_verify import parse, verify
from math_verify.errors import TimeoutException

from .grounding import answer_content
from .registry import register, register_truth_check

MATH_VERIFY_TIMEOUT_S = 5
"""Seconds math-verify may spend per parse or comparison (its own default), main thread only."""

NUMERIC_REL_TOL = 1e-6
"""Relative tolerance of the bare-number fallback: math-verify rounds floats to 6 decimals too."""

_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_YES_NO_RE = re.compile(r"\b(yes|no)\b", re.IGNORECASE)

# Choice-letter patterns, most explicit first (see extract_choice).
# "answer is B", "Answer: (B)", "the correct option is B.", "choice B", "option: B": the keywords
# in any case, the letter a capital, so "the answer is a dog" names no choice.
_EXPLICIT_CHOICE_RE = re.compile(r"(?i:answer|option|choice)\s*(?:(?i:is)|:)?\s*[:(\[]?\s*([A-Z])\b(?!')")
_LONE_CHOICE_RE = re.compile(r"^\W*([A-Za-z])\W*$")  # the whole answer is one letter: "B", "b.", "**B**"
# The answer opens with a label: "B. Paris", "C) 12"; the space after it keeps "U.S." out.
_LABEL_CHOICE_RE = re.compile(r"^\W*([A-Z])[.):](?:\s|$)")
_PAREN_CHOICE_RE = re.compile(r"[(\[]([A-Z])[)\]]")  # "(B)", "[B]"
_STANDALONE_RE = re.compile(r"\b([A-Z])\b(?!')")  # not "I'm"
_WORD_LETTERS = ("A", "I")  # single-capital English words: the article and the pronoun


def _where(index: int | None) -> str:
    return f"sample {index}: " if index is not None else ""


def _solution_text(sol, index: int | None) -> str:
    """The solution's answer as stripped text; numbers are allowed (JSON solutions like 3 or 0.5)."""
    if isinstance(sol, bool) or not isinstance(sol, (str, int, float)):
        raise ValueError(f"{_where(index)}solution {sol!r} is not a string or a number")
    if isinstance(sol, float) and not math.isfinite(sol):
        raise ValueError(f"{_where(index)}solution {sol!r} is not a finite number")
    text = answer_content(str(sol)).strip()
    if not text:
        raise ValueError(f"{_where(index)}solution {sol!r} holds no answer")
    return text


def normalize_text(text: str) -> str:
    """Strip, lowercase, collapse whitespace runs to one space, drop one trailing period."""
    text = " ".join(text.lower().split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    return text


def bare_number(text: str) -> float | None:
    """The value of an answer that is one number and nothing else, else None.

    Accepts surrounding whitespace and ``$...$``, a trailing period and thousands commas ("1,000").
    A number among words ("3 objects", "not 3") is not bare: math-verify judges those.
    """
    text = text.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text[1:-1].strip()
    text = text.removesuffix(".").strip()
    if _THOUSANDS_RE.fullmatch(text):
        text = text.replace(",", "")
    if not _NUMBER_RE.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _math_verify_equal(gold_text: str, pred_text: str) -> bool:
    """math-verify's verdict; False when either side does not parse or math-verify fails."""
    on_main = threading.current_thread() is threading.main_thread()
    timeout = MATH_VERIFY_TIMEOUT_S if on_main else None  # signal.alarm only works on the main thread
    try:
        gold = parse(gold_text, parsing_timeout=timeout)
        pred = parse(pred_text, parsing_timeout=timeout)
        if not gold or not pred:
            return False
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException: named on purpose
        return False


def answers_match(gold_text: str, pred_text: str) -> bool:
    """``default``'s rule: math-verify, else equal bare numbers, else equal normalised text."""
    if _math_verify_equal(gold_text, pred_text):
        return True
    g, p = bare_number(gold_text), bare_number(pred_text)
    if g is not None and p is not None:
        return math.isclose(g, p, rel_tol=NUMERIC_REL_TOL, abs_tol=1e-12)
    return normalize_text(gold_text) == normalize_text(pred_text)


def extract_choice(text: str) -> str | None:
    """The choice letter (A-Z) an answer names, or None when it names none or several.

    In order, the first rule that finds a letter wins:
    1. explicit: "answer is B", "Answer: (B)", "option B" (the last such phrase, a corrected answer);
    2. the whole answer is one letter, any case, with punctuation around it: "B", "(b)", "B.";
    3. the answer opens with a label: "B. Paris", "C) 12";
    4. a parenthesised capital anywhere: "(B)", "[B]" (the last one);
    5. standalone capitals, where "A" and "I" followed by a lowercase word are read as the article and
       the pronoun ("A cat is ...", "I think ..."), not as choices; exactly one distinct letter must
       remain, so a hedge like "B or C" names no choice.
    """
    found = _EXPLICIT_CHOICE_RE.findall(text)
    if found:
        return found[-1]
    m = _LONE_CHOICE_RE.match(text)
    if m:
        return m.group(1).upper()
    m = _LABEL_CHOICE_RE.match(text)
    if m:
        return m.group(1)
    found = _PAREN_CHOICE_RE.findall(text)
    if found:
        return found[-1]
    letters = set()
    for m in _STANDALONE_RE.finditer(text):
        letter, after = m.group(1), text[m.end() :]
        if letter in _WORD_LETTERS and re.match(r"\s+[a-z]", after):
            continue
        letters.add(letter)
    return letters.pop() if len(letters) == 1 else None


def yes_or_no(text: str) -> str | None:
    """"yes" or "no" if the text holds exactly one of those whole words (any case, repeats allowed)."""
    words = {w.lower() for w in _YES_NO_RE.findall(text)}
    return words.pop() if len(words) == 1 else None


def _mcq_gold(sol, index: int | None) -> str:
    gold = extract_choice(_solution_text(sol, index))
    if gold is None:
        raise ValueError(f"{_where(index)}solution {sol!r} names no choice letter (A-Z)")
    return gold


def _yes_no_gold(sol, index: int | None) -> str:
    gold = yes_or_no(_solution_text(sol, index))
    if gold is None:
        raise ValueError(f"{_where(index)}solution {sol!r} is not exactly one of yes / no")
    return gold


def _all_match_gold(sol, index: int | None) -> str:
    gold = normalize_text(_solution_text(sol, index))
    if not gold:  # e.g. a solution that is only "."
        raise ValueError(f"{_where(index)}solution {sol!r} is empty after normalisation")
    return gold


_GOLD = {"default": _solution_text, "mcq": _mcq_gold, "yes_no": _yes_no_gold, "all_match": _all_match_gold}


def _truth_check(gold):
    def check(sol, image_size=None) -> None:  # the solution read as the method's reward reads it
        gold(sol, None)

    return check


for _method, _gold in _GOLD.items():
    register_truth_check(_method)(_truth_check(_gold))


@register("default")
def default_reward(completions: list[str], solution: list, **_) -> list[float]:
    """1.0 if the answer equals the solution by math-verify, as a bare number, or as normalised text."""
    out = []
    for i, (text, sol) in enumerate(zip(completions, solution, strict=True)):
        gold = _solution_text(sol, i)
        out.append(float(answers_match(gold, answer_content(text).strip())))
    return out


@register("mcq")
def mcq_reward(completions: list[str], solution: list, **_) -> list[float]:
    """1.0 if the answer's choice letter equals the solution's; 0.0 when it names no single letter."""
    golds = [_mcq_gold(sol, i) for i, sol in enumerate(solution)]
    return [float(extract_choice(answer_content(t).strip()) == g) for t, g in zip(completions, golds, strict=True)]


@register("yes_no")
def yes_no_reward(completions: list[str], solution: list, **_) -> list[float]:
    """1.0 if the answer says exactly one of yes / no (whole words) and it is the solution's."""
    golds = [_yes_no_gold(sol, i) for i, sol in enumerate(solution)]
    return [float(yes_or_no(answer_content(t)) == g) for t, g in zip(completions, golds, strict=True)]


@register("all_match")
def all_match_reward(completions: list[str], solution: list, **_) -> list[float]:
    """1.0 if the answer equals the solution after ``normalize_text``."""
    golds = [_all_match_gold(sol, i) for i, sol in enumerate(solution)]
    return [float(normalize_text(answer_content(t)) == g) for t, g in zip(completions, golds, strict=True)]
