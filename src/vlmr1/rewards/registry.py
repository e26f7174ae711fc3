"""Reward registry and the helper that turns named rewards into tensors.

A reward function has TRL's signature::

    fn(completions: list[str], **columns) -> list[float | None]

``columns`` are the dataset columns of the batch (``solution``, ``image_size``, ...),
each a list of length N. A reward must accept and ignore columns it does not read
(take ``**kwargs``), because every reward receives every column. ``None`` means
"not applicable to this sample": it becomes NaN in ``RewardOutput.per_func`` and is
left out of the weighted total and of that reward's logged mean.

Departures from TRL, on purpose:
- a reward that returns NaN/inf is rejected (TRL lets it through, where it poisons the
  advantages silently); "not applicable" must be spelled ``None``;
- an exception inside a reward is re-raised as ``RewardFunctionError`` naming the reward,
  so a crash in a batch of many rewards says which one failed.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}


class RewardFunctionError(UserError, RuntimeError):
    """A reward function raised or returned something invalid; the message names it and the sample."""


def register(*names: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward under one or more names (the extra ones are aliases)."""
    if not names:
        raise ValueError("register() needs at least one name")

    def deco(fn: RewardFn) -> RewardFn:
        for name in names:
            existing = _REGISTRY.get(name)
            # Two different functions under one name would make configs ambiguous.
            if existing is not None and existing is not fn:
                raise ValueError(f"reward {name!r} is already registered to {existing.__module__}.{existing.__qualname__}")
            _REGISTRY[name] = fn
        return fn

    return deco


TruthCheck = Callable[[object, "tuple[int, int] | None"], None]
_TRUTH_CHECKS: dict[str, TruthCheck] = {}


def register_truth_check(*names: str) -> Callable[[TruthCheck], TruthCheck]:
    """Decorator: ``fn(solution, image_size)`` raises ValueError (saying what is wrong, and what
    would be right) for a ground truth the rewards ``names`` cannot score. Data loading runs it on
    every row, so a bad solution is found before training, with its file and line."""

    def deco(fn: TruthCheck) -> TruthCheck:
        for name in names:
            _TRUTH_CHECKS[name] = fn
        return fn

    return deco


def truth_check(name: str) -> TruthCheck | None:
    """The ground-truth check of registered reward ``name``; None for rewards that read no solution."""
    return _TRUTH_CHECKS.get(name)


def available_rewards() -> list[str]:
    """Sorted names (aliases included) that ``get_reward`` resolves without a file path."""
    return sorted(_REGISTRY)


def _load_from_file(path_str: str, func_name: str) -> RewardFn:
    path = Path(path_str).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"reward file {str(path)!r} not found (from spec '{path_str}:{func_name}')")
    # A unique module name per path, so two user files with the same stem do not collide.
    mod_name = f"vlmr1_user_reward_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import reward file {str(path)!r}")
    module = importlib.util.module_from_spec(spec)
    # Registered before exec, as the importlib docs recipe does: dataclasses and pickling
    # inside the user file look the module up in sys.modules.
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise
    if not hasattr(module, func_name):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise AttributeError(f"reward file {str(path)!r} has no function {func_name!r}; it defines: {public}")
    fn = getattr(module, func_name)
    if not callable(fn):
        raise TypeError(f"{func_name!r} in reward file {str(path)!r} is a {type(fn).__name__}, not a function")
    return fn


SPEC_ERRORS = (ValueError, FileNotFoundError, AttributeError, TypeError, ImportError, SyntaxError)
"""What ``get_reward`` raises for a wrong name or ``file.py:function`` spec (unknown name, missing
file or function, a file that does not import): the caller names the setting and re-raises."""


def get_reward(name_or_spec: str | RewardFn) -> RewardFn:
    """Resolve a registered name, or a user reward given as ``path/to/file.py:function``.

    A callable is returned unchanged, so configs built in Python can pass functions directly.
    """
    if callable(name_or_spec):
        return name_or_spec
    if name_or_spec in _REGISTRY:
        return _REGISTRY[name_or_spec]
    # rpartition: the path itself may contain ':' (e.g. a Windows drive letter).
    path_str, sep, func_name = name_or_spec.rpartition(":")
    if sep and path_str.endswith(".py"):
        if not func_name:
            raise ValueError(f"reward spec {name_or_spec!r} names no function after ':'")
        return _load_from_file(path_str, func_name)
    raise ValueError(
        f"unknown reward {name_or_spec!r}: not registered and not a 'path/to/file.py:function' spec; "
        f"registered rewards: {available_rewards()}"
    )


def resolve_rewards(names: list[str], overrides: dict[str, str] | None = None) -> dict[str, RewardFn]:
    """Config reward names -> functions, keyed by the configured name (so logs keep that name).

    ``overrides`` maps a reward name to the registered variant a model adapter offers for it
    (VLM-R1's ``is_reward_customized_from_vlm_module``): the variant still lives with the other
    rewards, the adapter only names it, and the config decides whether to use it.
    """
    overrides = overrides or {}
    return {name: get_reward(overrides.get(name, name)) for name in names}


@dataclass
class RewardOutput:
    per_func: torch.Tensor  # [N, n_rewards] float32, NaN where a function returned None
    total: torch.Tensor  # [N] nansum over rewards of weight * value (0 where every reward was None)
    names: list[str]  # [n_rewards] column names of per_func, in the order of `funcs`


def _check_values(name: str, values, n: int, ids: list | None = None) -> list[float]:
    if not isinstance(values, (list, tuple)):
        raise RewardFunctionError(f"reward {name!r} returned {type(values).__name__}, expected a list of {n} values")
    if len(values) != n:
        raise RewardFunctionError(f"reward {name!r} returned {len(values)} values for {n} completions")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
        elif isinstance(v, numbers.Real) and math.isfinite(v):  # numbers.Real covers numpy scalars
            out.append(float(v))
        else:
            sample = f" (sample {ids[i]!r})" if ids is not None else ""
            raise RewardFunctionError(
                f"reward {name!r} returned {v!r} at index {i}{sample}; expected a finite float/int, or None for 'not applicable'"
            )
    return out


def _failing_sample(fn: RewardFn, completions: list[str], columns: dict[str, list]) -> str:
    """" on sample ID (row i)" for the first row the reward fails on alone, else "".

    Rule rewards are cheap, so after a failure each row is retried on its own to say which sample
    (``sample_id`` column, the data row's id) broke it.
    """
    for i, text in enumerate(completions):
        try:
            fn([text], **{k: [v[i]] for k, v in columns.items()})
        except Exception:
            sid = columns.get("sample_id", [None] * len(completions))[i]
            return f" on sample {sid!r} (row {i})" if sid is not None else f" on row {i}"
    return ""


def compute_rewards(
    funcs: dict[str, RewardFn],
    weights: list[float] | None,
    completions: list[str],
    columns: dict[str, list],
) -> RewardOutput:
    """Call every reward on the batch and stack the results; ``weights=None`` means all 1.0."""
    names = list(funcs)
    if not names:
        raise ValueError("compute_rewards needs at least one reward function")
    if weights is None:
        weights = [1.0] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"got {len(weights)} reward weights for {len(names)} rewards {names}")
    n = len(completions)
    for key, col in columns.items():
        if len(col) != n:
            raise ValueError(f"column {key!r} has {len(col)} rows for {n} completions")

    cols = []
    for name in names:
        try:
            values = funcs[name](completions, **columns)
        except Exception as e:  # re-raised, never swallowed: only the reward name and sample are added
            where = _failing_sample(funcs[name], completions, columns)
            raise RewardFunctionError(f"reward {name!r} raised {type(e).__name__}{where}: {e}") from e
        cols.append(_check_values(name, values, n, columns.get("sample_id")))

    per_func = torch.tensor(cols, dtype=torch.float32).reshape(len(names), n).T.contiguous()  # [N, n_rewards]
    w = torch.tensor(weights, dtype=torch.float32)  # [n_rewards]
    total = torch.nansum(per_func * w, dim=1)  # [N]; NaN * w stays NaN, then nansum drops it
    return RewardOutput(per_func=per_func, total=total, names=names)
