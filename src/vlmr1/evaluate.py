"""Held-out evaluation for every task: greedy decoding, per-task metrics, per-sample JSONL.

Each sample is scored by the scorer of its kind (``eval_metrics.kind_of`` on its
``accu_reward_method``): REC Acc@0.5 and mean IoU, detection COCO mAP/AP50 over the split,
answer accuracy (math-verify and friends), GUI defect accuracy and region IoU. A split that
mixes kinds reports each kind's metrics prefixed with the kind ("detection/map").
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.jsonl import Sample
from .models.adapter import box_frames
from .rewards.registry import get_reward
from .rl.rollout import Sampling, generate
from .data.batch import make_batch
from .eval_metrics import SCORERS, before_after_rows, kind_of
from . import pass_at_k


@torch.no_grad()
def evaluate(
    model,
    adapter,
    samples: list[Sample],
    task: str,
    batch_size: int = 64,
    max_new_tokens: int = 24,
    predictions: Path | None = None,
    progress=None,
    format_reward: str | None = None,
    sampling: Sampling | None = None,
    num_samples: int = 0,
    seed: int = 0,
    decode=None,
) -> dict[str, float]:
    """Greedy decoding of ``samples`` and their task metrics; optionally one JSON line per sample.

    ``format_reward`` (a registered reward name) is also reported as ``format_rate``.
    ``num_samples`` > 0: also that many completions per prompt drawn with ``sampling``, scored
    as pass@k and mean@k (``pass_at_k``); each prompt's row gets its ``samples_correct``. The
    draws are seeded from ``seed`` and the batch, under a forked RNG (a training run's is untouched).
    ``decode(model, adapter, prompts, batch, max_new_tokens) -> texts`` makes the greedy answers
    (default: HF generate on ``model``; ``VLLMEngine.greedy`` for vLLM).
    """
    decode = decode or hf_greedy
    fmt = get_reward(format_reward) if format_reward else None
    rows: list[dict] = []
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size], task)
        prompts = adapter.encode_prompts(batch.problems, batch.images)
        texts = decode(model, adapter, prompts, batch, max_new_tokens)
        # The model answers in pixels of its resized input; boxes are scored in the original image.
        cols = dict(batch.columns, input_size=box_frames(adapter, prompts))
        base = [
            {
                "id": s.id,
                "kind": kind_of(s.reward_method),
                "problem": s.problem,
                "image": s.images,
                "completion": text,
                "solution": s.solution,
                "input_size": cols["input_size"][i],
            }
            for i, (s, text) in enumerate(zip(batch.samples, texts))
        ]
        formats = fmt(texts, **cols) if fmt is not None else [None] * len(base)
        for kind in sorted({r["kind"] for r in base}):
            idx = [i for i, r in enumerate(base) if r["kind"] == kind]
            sub = {k: [v[i] for i in idx] for k, v in cols.items()}
            for i, fields in zip(idx, SCORERS[kind].score_rows([texts[i] for i in idx], sub)):
                base[i].update(fields)
        for row, f in zip(base, formats):
            if f is not None:
                row["format"] = f
        if num_samples:
            for row, c in zip(base, sampled_correct(model, adapter, batch, prompts, sampling, num_samples, seed + start)):
                row["samples_correct"], row["samples_n"] = c, num_samples
        rows.extend(base)
        if progress is not None:
            progress.update(len(batch.samples))
    if predictions is not None:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return summarise(rows)


def hf_greedy(model, adapter, prompts, batch, max_new_tokens: int) -> list[str]:
    """Greedy answers with HF generate on the model itself."""
    return generate(model, adapter, prompts, Sampling(max_new_tokens=max_new_tokens, do_sample=False)).texts


def summarise(rows: list[dict]) -> dict[str, float]:
    """Metrics of one split; kinds prefixed only when the split mixes several."""
    kinds = sorted({r["kind"] for r in rows})
    metrics: dict[str, float] = {}
    for kind in kinds:
        part = SCORERS[kind].summarise([r for r in rows if r["kind"] == kind])
        metrics.update({(f"{kind}/{k}" if len(kinds) > 1 else k): v for k, v in part.items()})
    formats = [r["format"] for r in rows if "format" in r]
    if formats:
        metrics["format_rate"] = sum(formats) / len(formats)
    if rows and "samples_correct" in rows[0]:
        metrics.update(pass_at_k.summarise([r["samples_correct"] for r in rows], rows[0]["samples_n"]))
    metrics["n"] = len(rows)
    return metrics


def sampled_correct(model, adapter, batch, prompts, sampling: Sampling, n: int, seed: int) -> list[int]:
    """Per prompt of ``batch``, how many of ``n`` completions sampled with ``sampling`` are correct."""
    device = prompts.input_ids.device  # its generator forked too, whatever the accelerator: training's draws stay as they were
    with torch.random.fork_rng(devices=[device] if device.type != "cpu" else [], device_type=device.type if device.type != "cpu" else "cuda"):
        torch.manual_seed(seed)
        out = generate(model, adapter, adapter.repeat_prompts(prompts, n), sampling)  # [B * n] rows, prompt-major
    cols = {k: [v for v in vals for _ in range(n)] for k, vals in batch.columns.items()}
    cols["input_size"] = [f for f in box_frames(adapter, prompts) for _ in range(n)]
    kinds = [kind_of(s.reward_method) for s in batch.samples for _ in range(n)]
    ok = [False] * len(kinds)
    for kind in sorted(set(kinds)):
        idx = [i for i, k in enumerate(kinds) if k == kind]
        sub = {k: [v[i] for i in idx] for k, v in cols.items()}
        for i, fields in zip(idx, SCORERS[kind].score_rows([out.texts[i] for i in idx], sub)):
            ok[i] = pass_at_k.success(kind, fields)
    return [sum(ok[j * n : (j + 1) * n]) for j in range(len(batch.samples))]


def run_evals(cfg, model, adapter, data, out: Path, tag: str) -> dict[str, dict[str, float]]:
    """Evaluate every held-out split; predictions go to ``out/eval/{tag}-{split}.jsonl``."""
    from tqdm.auto import tqdm

    results = {}
    unwrapped = getattr(model, "module", model)
    for split, samples in data.evals.items():
        with tqdm(total=len(samples), desc=f"eval {tag} {split}", disable=not cfg.train.progress, leave=False) as bar:
            results[split] = evaluate(
                unwrapped,
                adapter,
                samples,
                cfg.data.task,
                batch_size=cfg.train.eval_batch_size,
                max_new_tokens=cfg.rollout.max_completion_length,
                predictions=out / "eval" / f"{tag}-{split}.jsonl",
                progress=bar,
                format_reward=cfg.reward.eval_format,
                sampling=Sampling.from_config(cfg.rollout),  # pass@k: the distribution GRPO samples from
                num_samples=cfg.train.eval_samples,
                seed=cfg.train.seed,
            )
    return results


def flat_metrics(results: dict[str, dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """{"in": {"acc50": ..}} -> {"eval/in/acc50": ..} for the metrics log."""
    return {f"{prefix}/{split}/{k}": v for split, m in results.items() for k, v in m.items() if k != "n"}


def _cell(v) -> str:
    return f"{v:>9.3f}" if v is not None else f"{'-':>9}"


def print_table(summary: dict) -> None:
    """Before/after/change per split and metric, for whatever metrics the splits report."""
    rows = before_after_rows(summary)
    if not rows:
        return
    print(f"\n{'split':<8}{'metric':<16}{'before':>9}{'after':>9}{'change':>9}")
    for split, metric, b, a, change in rows:
        delta = f"{change:>+9.3f}" if change is not None else f"{'-':>9}"
        print(f"{split:<8}{metric:<16}{_cell(b)}{_cell(a)}{delta}")


def print_metrics(name: str, metrics: dict[str, float]) -> None:
    """One split's metrics as a two-column table (``vlmr1 eval``)."""
    print(f"\n{'split':<16}{'metric':<16}{'value':>9}")
    for k, v in metrics.items():
        print(f"{name:<16}{k:<16}{v:>9.3f}" if k != "n" else f"{name:<16}{k:<16}{v:>9d}")
