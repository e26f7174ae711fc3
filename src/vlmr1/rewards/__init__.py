"""Rule-based rewards. Importing this package registers every built-in reward.

Resolve rewards by name (``get_reward("acc50")``) or from a user file
(``get_reward("my_rewards.py:score")``); ``compute_rewards`` turns a dict of them into tensors.
"""

from . import accuracy, answer, detection, format, grounding, gui, length, repetition  # noqa: F401  (imported for their @register side effects)
from .registry import (
    RewardFunctionError,
    RewardOutput,
    available_rewards,
    compute_rewards,
    get_reward,
    register,
    resolve_rewards,
)

__all__ = [
    "RewardFunctionError",
    "RewardOutput",
    "available_rewards",
    "compute_rewards",
    "get_reward",
    "register",
    "resolve_rewards",
]
