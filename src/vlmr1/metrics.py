"""Metrics: one JSON line per logged step (metrics.jsonl, mirrored to TensorBoard) and stage timers."""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path


class MetricsLogger:
    """One JSON line per logged step in metrics.jsonl, and the same scalars to TensorBoard."""

    def __init__(self, out: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out / "tensorboard"))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in row.items():
            if k != "step" and math.isfinite(v):
                self.tb.add_scalar(k, v, step)

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the log has no duplicates."""
        if self.enabled and self.path.exists():
            rows = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
            self.path.write_text("".join(r + "\n" for r in rows))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


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
