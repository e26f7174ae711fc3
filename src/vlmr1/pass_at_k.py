"""pass@k and mean@k from n sampled answers per prompt: how much headroom RL has on a dataset.

pass@k is the chance that at least one of k answers is correct; estimated without bias from
n >= k samples with c correct as 1 - C(n - c, k) / C(n, k) (Chen et al., "Evaluating Large
Language Models Trained on Code", arXiv 2107.03374), averaged over prompts. mean@k, the
expected share of correct answers among k, is c / n for every k. A large gap between pass@k and
greedy accuracy means sampling finds answers greedy decoding misses: what GRPO can learn from.

"Correct" per task kind (``success``): REC a box with IoU >= 0.5; answers the accuracy reward's
1.0; GUI the right defect type and, for a real defect, region IoU >= 0.5; detection every box
matched one-to-one at IoU >= 0.5 with its label and nothing extra (the image's own AP50 = 1).
"""

from __future__ import annotations

from .rewards import detection


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``c`` correct of ``n`` samples (k <= n)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0  # every k-subset holds a correct answer
    # C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the large binomials
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def ks_for(n: int) -> list[int]:
    """The k reported for n samples: 1, 2, 4, ... up to n, and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def summarise(correct: list[int], n: int) -> dict[str, float]:
    """pass@k for ``ks_for(n)`` and mean@n over prompts, from each prompt's count of correct samples."""
    if not correct:
        raise ValueError("pass@k needs at least one prompt")
    out = {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks_for(n)}
    out[f"mean@{n}"] = sum(correct) / (n * len(correct))
    return out


def _detection_success(row: dict) -> bool:
    def dets(pairs):
        return [detection.Detection(box, label) for box, label in (pairs or [])]

    pred, truth = dets(row["pred"]), dets(row["truth"])
    return row["parsed"] and len(pred) == len(truth) == len(detection.greedy_matches(pred, truth))


SUCCESS = {
    "rec": lambda row: bool(row["hit"]),
    "answer": lambda row: bool(row["correct"]),
    "gui": lambda row: bool(row["type_correct"]) and (row["iou"] is None or row["iou"] >= 0.5),
    "detection": _detection_success,
}


def success(kind: str, row: dict) -> bool:
    """Whether a scored row (``eval_metrics.SCORERS[kind].score_rows``) counts as a correct answer."""
    return SUCCESS[kind](row)
