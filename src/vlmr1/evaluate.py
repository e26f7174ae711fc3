"""Held-out evaluation of REC: greedy decoding, Acc@0.5, mean IoU, format rate, per-sample JSONL."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data.jsonl import Sample
from .rewards.grounding import IOU_THRESHOLD, iou, pred_and_truth
from .rewards.registry import get_reward
from .rl.rollout import Sampling, generate
from .runtime import make_batch


@torch.no_grad()
def evaluate_rec(
    model,
    adapter,
    samples: list[Sample],
    task: str,
    batch_size: int = 64,
    max_new_tokens: int = 24,
    predictions: Path | None = None,
    progress=None,
    format_reward: str = "box_format",
) -> dict[str, float]:
    """Greedy Acc@0.5, mean IoU and format rate over ``samples``; optionally one JSON line per sample."""
    fmt = get_reward(format_reward)
    rows = []
    for start in range(0, len(samples), batch_size):
        batch = make_batch(samples[start : start + batch_size], task)
        prompts = adapter.encode_prompts(batch.problems, batch.images)
        out = generate(model, adapter, prompts, Sampling(max_new_tokens=max_new_tokens, do_sample=False))
        formats = fmt(out.texts)
        # The model answers in pixels of its resized input; boxes are scored in the original image.
        pairs = pred_and_truth(
            out.texts,
            [smp.solution for smp in batch.samples],
            image_size=batch.columns["image_size"],
            input_size=[sizes[0] if sizes else None for sizes in prompts.input_sizes],
        )
        for i, (text, (pred, truth)) in enumerate(zip(out.texts, pairs)):
            score = iou(pred, truth) if pred is not None else 0.0
            rows.append(
                {
                    "id": batch.samples[i].id,
                    "problem": batch.samples[i].problem,
                    "image": batch.samples[i].images,
                    "completion": text,
                    "pred_box": pred,
                    "true_box": truth,
                    "iou": score,
                    "hit": score >= IOU_THRESHOLD,
                    "format": formats[i],
                }
            )
        if progress is not None:
            progress.update(len(batch.samples))
    if predictions is not None:
        predictions.parent.mkdir(parents=True, exist_ok=True)
        predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = max(1, len(rows))
    return {
        "acc50": sum(r["hit"] for r in rows) / n,
        "mean_iou": sum(r["iou"] for r in rows) / n,
        "format_rate": sum(r["format"] for r in rows) / n,
        "n": len(rows),
    }


def run_evals(cfg, model, adapter, data, out: Path, tag: str) -> dict[str, dict[str, float]]:
    """Evaluate every held-out split; predictions go to ``out/eval/{tag}-{split}.jsonl``."""
    from tqdm.auto import tqdm

    results = {}
    unwrapped = getattr(model, "module", model)
    for split, samples in data.evals.items():
        with tqdm(total=len(samples), desc=f"eval {tag} {split}", disable=not cfg.train.progress, leave=False) as bar:
            results[split] = evaluate_rec(
                unwrapped,
                adapter,
                samples,
                cfg.data.task,
                batch_size=cfg.train.eval_batch_size,
                max_new_tokens=cfg.rollout.max_completion_length,
                predictions=out / "eval" / f"{tag}-{split}.jsonl",
                progress=bar,
                format_reward=cfg.reward.eval_format,
            )
    return results


def flat_metrics(results: dict[str, dict[str, float]], prefix: str = "eval") -> dict[str, float]:
    """{"in": {"acc50": ..}} -> {"eval/in/acc50": ..} for the metrics log."""
    return {f"{prefix}/{split}/{k}": v for split, m in results.items() for k, v in m.items() if k != "n"}


def print_table(summary: dict) -> None:
    before, after = summary.get("before", {}), summary.get("after", {})
    if not (before or after):
        return
    print(f"\n{'split':<8}{'metric':<12}{'before':>9}{'after':>9}{'change':>9}")
    for split in sorted(set(before) | set(after)):
        for metric in ("acc50", "mean_iou", "format_rate"):
            b, a_ = before.get(split, {}).get(metric), after.get(split, {}).get(metric)
            fmt = lambda v: f"{v:>9.3f}" if v is not None else f"{'-':>9}"  # noqa: E731
            delta = f"{a_ - b:>+9.3f}" if b is not None and a_ is not None else f"{'-':>9}"
            print(f"{split:<8}{metric:<12}{fmt(b)}{fmt(a_)}{delta}")
