"""Checkpoints: atomic writes, keep_last, resume lookup and the trainer state beside the weights.

A checkpoint folder ``checkpoint-<step>`` holds the model (or LoRA adapters) and processor in HF
format, ``optimizer.pt`` (optimizer, lr schedule and torch RNG state: tensors and plain containers,
read with ``weights_only``) and ``trainer_state.json``. The state file is written last, so its
presence is what marks a checkpoint complete.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import torch

from .config import Config
from .errors import ConfigError, ModelFolderError
from .models.folders import read_json

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"


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
    """The checkpoint ``train.resume`` names: None (fresh run), the newest in ``out`` ("auto"), or a folder."""
    if cfg.train.resume is None:
        return None
    if cfg.train.resume == "auto":
        return latest_checkpoint(out)
    path = Path(cfg.train.resume)
    if not path.is_dir():
        raise ConfigError(f"train.resume={path}: no such folder (a checkpoint-N folder of a run, or auto)")
    if not (path / STATE_FILE).exists():
        raise ConfigError(f"train.resume={path}: not a complete checkpoint (no {STATE_FILE}); resume from an earlier checkpoint-N")
    return path


def load_trainer_state(ckpt: Path, optimizer, scheduler) -> dict:
    """Restore optimizer, schedule and RNG from ``ckpt``; returns its trainer state (``step``, ...)."""
    state = read_json(ckpt / STATE_FILE, "the checkpoint is incomplete")
    if not isinstance(state.get("step"), int):
        raise ModelFolderError(f"{ckpt / STATE_FILE}: no integer 'step'; the file is not a vlmr1 trainer state")
    file = ckpt / OPTIM_FILE
    if not file.is_file():
        raise ModelFolderError(f"{file}: not found; the checkpoint is incomplete: resume from an earlier checkpoint-N")
    # weights_only: the file holds tensors and plain containers only, never arbitrary pickles.
    try:
        blob = torch.load(file, weights_only=True)
    except pickle.UnpicklingError:
        raise ModelFolderError(
            f"{file}: holds Python objects beyond tensors, which vlmr1 does not unpickle (that can run code); "
            "it was not written by vlmr1: resume from a vlmr1 checkpoint"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:  # torch's errors for a truncated or corrupt archive
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise ModelFolderError(f"{file}: unreadable ({first}); resume from an earlier checkpoint-N") from None
    if not (isinstance(blob, dict) and {"optimizer", "scheduler", "rng"} <= set(blob)):
        raise ModelFolderError(f"{file}: not a vlmr1 optimizer state (expected optimizer, scheduler and rng entries)")
    try:
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
    except (ValueError, KeyError) as e:  # torch: "loaded state dict contains a parameter group that doesn't match"
        raise ModelFolderError(
            f"{file}: does not fit this run's trainable parameters ({e}); resume with the settings the run started with"
        ) from None
    torch.set_rng_state(blob["rng"])
    return state


def write_json(path: Path, data: dict) -> None:
    """Replace ``path`` atomically with ``data`` as JSON (a kill leaves the old file or the new)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
