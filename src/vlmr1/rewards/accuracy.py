"""``accuracy``: one reward for mixed datasets, dispatching each sample to the reward its row names.

A row's ``accu_reward_method`` reaches the rewards as the ``reward_method`` column (None means
``"default"``). Samples are grouped by method; each registered reward of that name is called once
on its subset, with the matching subset of every column, and the results are put back in batch
order. Names are looked up when the reward runs, so methods registered by modules imported later
(e.g. detection's ``map``) resolve too.

``METHOD_ALIASES`` maps dataset method names to registered rewards. VLM-R1's REC rows are scored
by its Qwen module's ``iou_reward`` (continuous IoU, the Acc@0.5 threshold commented out), and
our REC rows say ``"rec"``, so ``rec -> iou``.

Departures from VLM-R1 (``grpo_jsonl.accuracy_reward``), and why:
- an unknown method raised nothing there: it fell through to the default (math-verify / fuzzy
  string) reward, so a typo in a dataset silently trained on the wrong signal. Here it is a
  ValueError naming the method and the sample;
- methods resolve to registered rewards only, never to ``file.py:function`` specs: a dataset row
  must not be able to load code;
- ``accuracy`` and ``length`` are refused as methods: they would call themselves forever;
- one call per method and batch instead of one per sample, so rewards see whole sub-batches.
"""

from __future__ import annotations

from . import answer, grounding  # noqa: F401  (register "default" and the "rec" alias target "iou")
from .registry import available_rewards, get_reward, register

DEFAULT_METHOD = "default"
"""Method of a sample whose row has no ``accu_reward_method``."""

METHOD_ALIASES = {"rec": "iou"}
"""Dataset method name -> registered reward name."""

_SELF_REFERENTIAL = ("accuracy", "length")  # both call this dispatcher


def method_reward(method: str) -> str:
    """The registered reward that scores accuracy method ``method``; ValueError for an unknown one."""
    name = METHOD_ALIASES.get(method, method)
    if name in _SELF_REFERENTIAL:
        raise ValueError(f"accuracy method {method!r} would make 'accuracy' call itself")
    registered = set(available_rewards())
    if name not in registered:
        raise ValueError(f"unknown accuracy method {method!r}; registered rewards: {sorted(registered)}, aliases: {METHOD_ALIASES}")
    return name


def resolve_methods(reward_method: list | None, n: int) -> list[str]:
    """Registered reward name per sample; ValueError for an unknown or invalid method."""
    if reward_method is None:  # no column at all: every sample is "default"
        reward_method = [None] * n
    if len(reward_method) != n:
        raise ValueError(f"reward_method has {len(reward_method)} rows for {n} completions")
    names = []
    for i, method in enumerate(reward_method):
        if method is None:
            method = DEFAULT_METHOD
        if not isinstance(method, str):
            raise ValueError(f"sample {i}: reward_method {method!r} is not a string")
        try:
            names.append(method_reward(method))
        except ValueError as e:
            raise ValueError(f"sample {i}: {e}") from None
    return names


@register("accuracy")
def accuracy_reward(completions: list[str], solution: list, reward_method: list | None = None, **columns) -> list:
    """Each sample scored by the reward its ``reward_method`` names (None -> ``default``)."""
    n = len(completions)
    names = resolve_methods(reward_method, n)
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)

    out: list = [None] * n
    for name, idx in groups.items():
        sub_columns = {key: [col[i] for i in idx] for key, col in columns.items()}
        try:
            values = get_reward(name)(
                [completions[i] for i in idx],
                [solution[i] for i in idx],
                reward_method=[names[i] for i in idx],
                **sub_columns,
            )
        except ValueError as e:
            # The inner message counts samples within the subset; give the batch indices too.
            raise ValueError(f"accuracy method {name!r} on batch samples {idx} (its 'sample k' is idx[k]): {e}") from e
        if len(values) != len(idx):
            raise ValueError(f"accuracy method {name!r} returned {len(values)} values for {len(idx)} samples")
        for i, value in zip(idx, values):
            out[i] = value
    return out
