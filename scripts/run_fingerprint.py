"""Fingerprint a short training run, to check that a refactor changed no behaviour.

    python scripts/run_fingerprint.py OUT.json [train|sft] [section.field=value ...]

Runs ``vlmr1 train`` (default 3 steps) in a temporary folder and writes one JSON file with a
SHA-256 per sampled rollout (completion ids and texts, in sampling order, evaluation decodes
included), the metrics log without its wall-clock timings, every evaluation prediction file and
every final weight tensor. Run it on two checkouts and compare the files: equal files mean the
same rollouts, metrics and weights to the bit. ``--compare A.json B.json`` prints what differs
(metrics that only B logs, new in the change, are listed but allowed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(kind: str, overrides: list[str]) -> dict:
    import torch
    from safetensors.torch import load_file

    import vlmr1.rl.rollout as rollout_module
    from vlmr1.config import load_config

    rollouts: list[str] = []
    finish = rollout_module.finish_rollout

    def recording_finish(*args, **kwargs):
        # Every sampler (shared-prompt, plain generate, greedy evaluation) ends here.
        r = finish(*args, **kwargs)
        rollouts.append(_sha(r.completion_ids.numpy().tobytes() + json.dumps(r.texts).encode()))
        return r

    rollout_module.finish_rollout = recording_finish
    with tempfile.TemporaryDirectory() as tmp:
        defaults = ["train.steps=3", "train.progress=false", f"train.output_dir={tmp}/run"]
        cfg = load_config(None, defaults + overrides)
        torch.manual_seed(0)
        if kind == "sft":
            from vlmr1.sft import sft

            sft(cfg)
        else:
            from vlmr1.rl.trainer import train

            train(cfg)
        out = Path(cfg.train.output_dir)
        metrics = [
            {k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "tokens_per_second"}
            for line in (out / "metrics.jsonl").read_text().splitlines()
        ]
        weights = {}
        for f in sorted((out / "final").glob("*.safetensors")):
            for name, t in sorted(load_file(f).items()):
                weights[name] = _sha(t.contiguous().view(torch.uint8).numpy().tobytes())
        # Predictions name their image files, which lie in this run's temporary folder.
        evals = {p.name: _sha(p.read_text().replace(str(out), "RUN").encode()) for p in sorted((out / "eval").glob("*.jsonl"))}
    return {"rollouts": rollouts, "metrics": metrics, "eval": evals, "weights": weights}


def compare(a_path: str, b_path: str) -> int:
    """Whether run B (after a change) reproduces run A: every rollout, weight and evaluation file,
    and every metric A logged, to the bit. Metrics that only B logs are listed, not counted."""
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    bad = [k for k in ("rollouts", "eval", "weights") if a[k] != b[k]]
    if len(a["metrics"]) != len(b["metrics"]):
        bad.append("metrics (line count)")
    added = set()
    for ra, rb in zip(a["metrics"], b["metrics"]):
        added |= set(rb) - set(ra)
        for key in sorted(ra):
            if ra[key] != rb.get(key):
                bad.append(f"metrics: step {ra['step']} {key} {ra[key]} != {rb.get(key)}")
    for k in bad:
        print(f"differs: {k}")
    if added:
        print(f"metrics only in {b_path}: {sorted(added)}")
    print("identical" if not bad else "NOT identical")
    return 1 if bad else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compare"]:
        return compare(argv[1], argv[2])
    out, rest = argv[0], argv[1:]
    kind = rest.pop(0) if rest[:1] in (["train"], ["sft"]) else "train"
    result = fingerprint(kind, rest)
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"{out}: {len(result['rollouts'])} rollouts, {len(result['metrics'])} metric lines, {len(result['weights'])} tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
