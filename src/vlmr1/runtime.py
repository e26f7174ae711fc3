"""What every run shares: run folder, metrics, data order, optimizer, atomic checkpoints."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import Config, TrainConfig, dump
from .data.jsonl import Sample, format_question

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(cfg: Config, path, trainable: bool = True, fresh_lora: bool = False):
    """The adapter for ``path`` with the config's dtype, image size and fine-tuning modes.

    ``path`` is a full checkpoint or a LoRA checkpoint (adapter weights on a recorded base).
    ``fresh_lora`` adds new LoRA adapters (model.lora_rank > 0) to a full checkpoint: the start
    of a LoRA run.
    """
    from .models import finetune
    from .models.adapter import load_adapter

    m = cfg.model
    lora = finetune.is_lora_checkpoint(path)
    base = finetune.lora_base_path(path) if lora else path
    image = {"min_pixels": m.min_pixels, "max_pixels": m.max_pixels, "max_patches": m.max_patches}
    adapter = load_adapter(base, dtype=DTYPES[m.dtype], **image)  # unset (None) options are dropped
    if lora:
        finetune.load_lora(adapter, path, trainable)
    elif fresh_lora and m.lora_rank > 0:
        finetune.add_lora(adapter, m)
    finetune.apply_modes(adapter, m, trainable)
    return adapter


def make_run_dir(cfg: Config, kind: str) -> Path:
    if cfg.train.output_dir is None:
        cfg.train.output_dir = str(Path("runs") / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_config(cfg: Config, out: Path) -> None:
    """Save the resolved config in the run folder and print it, so every run states its settings."""
    dump(cfg, out / "config.yaml")
    print((out / "config.yaml").read_text())


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
    """Wall time per named stage, summed since the last ``pop``."""

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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class DataOrder:
    """Deterministic epoch-wise shuffles; batch ``step`` of rank ``rank`` depends only on (seed, step)."""

    def __init__(self, n: int, seed: int, per_rank: int, world: int = 1, rank: int = 0):
        self.n, self.seed, self.per_rank, self.world, self.rank = n, seed, per_rank, world, rank
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        # A batch spans at most two epochs, so keeping the last permutation avoids recomputing it per sample.
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, step: int) -> list[int]:
        size = self.per_rank * self.world
        start = step * size + self.rank * self.per_rank
        out = []
        for pos in range(start, start + self.per_rank):
            epoch, offset = divmod(pos, self.n)
            out.append(int(self._permutation(epoch)[offset]))
        return out


def load_images(sample: Sample) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sample.images]


@dataclass
class Batch:
    """Samples ready for the adapter: formatted questions, PIL images, reward columns."""

    samples: list[Sample]
    problems: list[str]
    images: list[list[Image.Image]]
    columns: dict[str, list] = field(default_factory=dict)


def make_batch(samples: list[Sample], task: str) -> Batch:
    images = [load_images(s) for s in samples]
    columns: dict[str, list] = {
        "solution": [s.solution for s in samples],
        "reward_method": [s.reward_method for s in samples],
        "sample_id": [s.id for s in samples],
        # Original image size (w, h) of the first image: where boxes are scored.
        "image_size": [ims[0].size if ims else None for ims in images],
    }
    keys = sorted({k for s in samples for k in s.extra} - set(columns))
    for k in keys:
        columns[k] = [s.extra.get(k) for s in samples]
    problems = [format_question(task, s.problem) for s in samples]
    return Batch(samples, problems, images, columns)


def build_optimizer(params, t: TrainConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def factor(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / (t.warmup_steps + 1)
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        if t.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if t.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        return 1.0

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimizer_step(accelerator, model, optimizer, scheduler, max_grad_norm: float, loss_finite: bool = True) -> tuple[float, bool]:
    """Clip (0 = no clipping), step, advance the schedule, clear gradients.

    Returns (pre-clip gradient norm, whether the step was taken). A non-finite loss on any rank
    or a non-finite gradient norm skips the update (and the schedule), so one bad batch cannot
    write NaN into the weights; every rank takes the same decision.
    """
    norm = float(accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf))
    bad = torch.tensor(float(not (loss_finite and math.isfinite(norm))), device=accelerator.device)
    ok = accelerator.reduce(bad, "sum").item() == 0
    if ok:
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm, ok


@contextmanager
def micro_batch(accelerator, model, last: bool):
    """Backward of one micro-batch of an accumulated step: gradients sync only on the ``last``.

    DDP: ``no_sync`` skips the all-reduce until the last micro-batch. DeepSpeed: accelerate's
    backward steps the engine whenever ``sync_gradients`` is set, so it is set only for the last
    (accelerate's own ``accumulate`` needs a fixed micro-batch count; ours varies when groups
    are filtered, hence the flag is set directly).
    """
    accelerator.gradient_state._set_sync_gradients(last)
    try:
        with accelerator.no_sync(model) if not last else nullcontext():
            yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


@contextmanager
def full_parameters(accelerator, model):
    """All parameters gathered on every rank while generating, under DeepSpeed ZeRO-3.

    Generation runs hundreds of forwards; gathering the shards once per rollout instead of per
    layer per token is what makes ZeRO-3 rollouts usable. Other engines: nothing to do (DDP and
    ZeRO-2 hold full parameters; FSDP2 modules unshard in their own forward hooks).
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed  # present whenever accelerate runs DeepSpeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
    else:
        yield


class NonFiniteError(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""


class NonFiniteGuard:
    """Counts skipped (non-finite) optimizer steps; ``record`` says when a run must stop."""

    def __init__(self, limit: int, skipped: int = 0):
        self.limit, self.skipped, self.in_row = limit, skipped, 0

    def record(self, stepped: bool) -> bool:
        if stepped:
            self.in_row = 0
            return False
        self.in_row += 1
        self.skipped += 1
        return self.in_row > self.limit

    def message(self, step: int, ckpt: Path) -> str:
        return (
            f"{self.in_row} optimizer steps in a row had a non-finite (NaN/inf) loss or gradient, the last at "
            f"step {step}; stopping (train.max_nonfinite_steps={self.limit}). Each was skipped, so {ckpt} holds "
            "the last finite weights. Lower train.lr, keep train.max_grad_norm > 0, use model.dtype=bfloat16 "
            "rather than float16, and check the rewards for extreme values before resuming."
        )


@contextmanager
def explain_oom(settings: list[str]):
    """Turn a GPU out-of-memory error into one that names the settings that reduce memory."""
    try:
        yield
    except torch.cuda.OutOfMemoryError as e:
        raise RuntimeError(
            f"GPU out of memory ({str(e).splitlines()[0] if str(e) else 'no details'}). Lower one of: "
            + ", ".join(settings)
        ) from e


def finish_run(
    cfg: Config, out: Path, adapter, model, optimizer, scheduler, data, logger: MetricsLogger, summary: dict, state: dict
) -> None:
    """Rank 0 at the end of SFT or GRPO: final checkpoint and model, held-out evaluation, summary.

    ``state`` goes into the final checkpoint's trainer state (e.g. the skipped-step count).
    """
    from .evaluate import flat_metrics, print_table, run_evals  # evaluate imports this module

    # The loop has already saved the last step when save_every divides it: saving it again would
    # only open a window in which that checkpoint is being replaced.
    if latest_checkpoint(out) != out / f"checkpoint-{cfg.train.steps}":
        save_checkpoint(out, cfg.train.steps, adapter, optimizer, scheduler, state, keep_last=cfg.train.keep_last)
    adapter.save(out / "final")
    if cfg.train.eval_after and data.evals:
        summary["after"] = run_evals(cfg, model, adapter, data, out, "after")
        logger.log(cfg.train.steps, flat_metrics(summary["after"], "eval_after"))
    write_json(out / "summary.json", summary)
    print_table(summary)


def save_checkpoint(
    out: Path, step: int, adapter, optimizer, scheduler, extra: dict | None = None, keep_last: int = 0
) -> Path:
    """Write ``checkpoint-{step}`` atomically: into a temporary folder, renamed when complete.

    ``keep_last > 0`` then deletes all but the newest ``keep_last`` complete checkpoints: only
    after the new one is in place, so a crash at any moment leaves a usable checkpoint.
    """
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    # Leftovers of a run killed while writing or deleting: never complete, never resumed from.
    for stale in [*out.glob(".tmp-checkpoint-*"), *out.glob(".old-checkpoint-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter.save(tmp)
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()},
        tmp / OPTIM_FILE,
    )
    state = {"step": step, **(extra or {})}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    with open(tmp / STATE_FILE) as f:
        os.fsync(f.fileno())
    # A checkpoint of the same step (finish_run re-saves the loop's last one) is renamed away before
    # it is deleted: deleted in place, a kill midway could leave it "complete" (state file still
    # there) with its weights gone, and resume=auto would pick it.
    replaced = _set_aside(final) if final.exists() else None
    os.replace(tmp, final)
    if replaced is not None:
        shutil.rmtree(replaced)
    if keep_last > 0:
        for old in complete_checkpoints(out)[:-keep_last]:
            shutil.rmtree(_set_aside(old))
    return final


def _set_aside(ckpt: Path) -> Path:
    """Rename a checkpoint to a hidden name that no lookup matches (atomic), for deletion."""
    trash = ckpt.with_name(f".old-{ckpt.name}")
    shutil.rmtree(trash, ignore_errors=True)  # left by a kill during an earlier delete
    os.replace(ckpt, trash)
    return trash


def complete_checkpoints(out: Path) -> list[Path]:
    """Checkpoints whose write finished (state file present), oldest first."""
    # Only checkpoint-<step> names: a user's "checkpoint-best" copy is not part of the sequence.
    done = [p for p in out.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit() and (p / STATE_FILE).exists()]
    return sorted(done, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(out: Path) -> Path | None:
    done = complete_checkpoints(out)
    return done[-1] if done else None


def resolve_resume(cfg: Config, out: Path) -> Path | None:
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(out)
    path = Path(cfg.train.resume)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"train.resume={path}: not a complete checkpoint (no {STATE_FILE})")
    return path


def load_trainer_state(ckpt: Path, optimizer, scheduler) -> dict:
    # weights_only: the file holds tensors and plain containers only, never arbitrary pickles.
    blob = torch.load(ckpt / OPTIM_FILE, weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"])
    return json.loads((ckpt / STATE_FILE).read_text())


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)

