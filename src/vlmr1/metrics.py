"""Metrics: one JSON line per logged step (metrics.jsonl), mirrored to the trackers
``train.report_to`` names, and stage timers.

TensorBoard (the default) is written by our own SummaryWriter in ``RUN/tensorboard``, which also
takes the rollout tables; Weights & Biases and MLflow go through accelerate's tracker API
(``Accelerator(log_with=...)``, ``init_trackers``, ``log``), configured by their own environment
variables (``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``...).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path


TRACKERS = ("tensorboard", "wandb", "mlflow")
"""What ``train.report_to`` may name (several at once), or "none"."""
ACCELERATE_TRACKERS = ("wandb", "mlflow")  # the ones accelerate runs for us


def accelerate_trackers(report_to: list[str]) -> list[str]:
    """The ``Accelerator(log_with=...)`` list for ``train.report_to``."""
    return [t for t in report_to if t in ACCELERATE_TRACKERS]


def flat_config(config: dict) -> dict[str, str | int | float | bool]:
    """``{"algo": {"beta": 0.04}}`` -> ``{"algo.beta": 0.04}``, lists and None as text (trackers take scalars)."""
    flat = {}
    for section, values in config.items():
        for name, value in values.items():
            flat[f"{section}.{name}"] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


class MetricsLogger:
    """One JSON line per logged step in metrics.jsonl, and the same scalars to every tracker.

    ``accelerator``: the run's, when it was built with accelerate trackers (``init_trackers``
    already called); None logs to metrics.jsonl and TensorBoard only."""

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = True, accelerator=None):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        self.accelerator = accelerator
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        finite = {k: v for k, v in row.items() if k != "step" and math.isfinite(v)}
        if self.tb is not None:
            for k, v in finite.items():
                self.tb.add_scalar(k, v, step)
        if self.accelerator is not None:
            self.accelerator.log(finite, step=step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log has no duplicates."""
        if self.enabled and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(r + "\n" for r in rows))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.accelerator is not None:
            # Not accelerator.end_training(): it also destroys the process group, which a second
            # run in the same processes (vlmr1 compare, a library caller) still needs.
            for tracker in self.accelerator.trackers:
                tracker.finish()


class Timers:
    """Wall time per named stage, summed since the last ``pop`` (stages may nest: "step" holds the rest)."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        yield
        self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals = {}
        return out
