"""``vlmr1 report RUN_DIR``: a self-contained HTML page (plus PNGs beside it) for a run folder.

Reads what ``vlmr1 train`` and ``vlmr1 sft`` leave behind: ``config.yaml``, ``metrics.jsonl``,
``summary.json`` and ``eval/<tag>-<split>.jsonl`` (per-sample predictions, boxes in original-image
pixels) and ``rollouts.jsonl``. Sections: run summary, training curves, evaluation curves, the
training rollouts (``report_rollouts``), and a gallery of the best and worst evaluation samples
of each split. No network and no JavaScript: the folder can be copied,
mailed or opened from disk. Any missing part (no rewards in an SFT run, no eval files, no
summary of a killed run) is stated on the page instead of failing.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path

import yaml

from .report_plots import PRED, TRUE, Series, plot_eval, plot_panels, render_sample, row_boxes
from .report_rollouts import CSS as ROLLOUTS_CSS
from .report_rollouts import rollouts_html
from .rewards.detection import MATCH_IOU, Detection, greedy_matches
from .rewards.grounding import answer_content
from .eval_metrics import before_after_rows

_EVAL_FILE = re.compile(r"^(before|after|step(\d+))-(.+)\.jsonl$")
_EVAL_KEY = re.compile(r"^(eval|eval_after)/([^/]+)/(.+)$")  # eval/<split>/<metric>; the metric may hold "/"
SCORE_NAMES = {"rec": "IoU", "detection": f"F1@{MATCH_IOU}", "gui": "defect score"}  # answers: correct / wrong


# ---------------------------------------------------------------- reading the run folder


def read_metrics(path: Path) -> list[dict]:
    """Rows of metrics.jsonl; a line that is not JSON stops with file:line."""
    rows = []
    if not path.exists():
        return rows
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
    return rows


def series(rows: list[dict], key: str) -> Series:
    """(step, value) of every row holding a finite ``key``."""
    points = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [(s, v) for s, v in points if math.isfinite(v)]


def eval_series(rows: list[dict]) -> dict[str, dict[str, Series]]:
    """split -> metric -> points from ``eval/`` lines and the final ``eval_after/`` line.

    When both describe the same step (eval_every divides the steps) the final evaluation wins;
    they score the same weights, so the values agree anyway.
    """
    found: dict[str, dict[str, dict[int, float]]] = {}
    for r in rows:
        for key, value in r.items():
            m = _EVAL_KEY.match(key)
            if m and isinstance(value, (int, float)) and math.isfinite(value):
                found.setdefault(m[2], {}).setdefault(m[3], {})[int(r["step"])] = float(value)
    return {split: {name: sorted(pts.items()) for name, pts in metrics.items()} for split, metrics in found.items()}


def latest_predictions(run_dir: Path) -> dict[str, tuple[str, Path]]:
    """split -> (tag, file) of its newest predictions: after-*, else the highest step*, else before-*."""
    best: dict[str, tuple[float, str, Path]] = {}
    for path in sorted((run_dir / "eval").glob("*.jsonl")):
        m = _EVAL_FILE.match(path.name)
        if not m:
            continue
        rank = math.inf if m[1] == "after" else (int(m[2]) if m[2] else -1.0)
        if m[3] not in best or rank > best[m[3]][0]:
            best[m[3]] = (rank, m[1], path)
    return {split: (tag, path) for split, (_, tag, path) in sorted(best.items())}


def resolve_image(path: str, run_dir: Path) -> Path | None:
    """Where an image named in a predictions row is now.

    vlmr1 records absolute paths; a relative one is read against the run folder and its data/.
    A run folder that was moved keeps its images under it: then the longest tail of the recorded
    path that exists under the run folder is used.
    """
    p = Path(path)
    if not p.is_absolute():
        for root in (run_dir, run_dir / "data"):
            if (root / p).exists():
                return root / p
    elif p.exists():
        return p
    parts = p.parts
    for k in range(1, len(parts)):
        candidate = run_dir.joinpath(*parts[k:])
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------- per-sample scores


def detection_f1(pred: list | None, truth: list) -> float:
    """F1 of one image's ``[box, label]`` detections under the detection rewards' one-to-one
    matching (``detection.greedy_matches``: equal label, IoU >= 0.5).

    An unparsed answer scores 0; an image with nothing to find and nothing found scores 1.
    """
    if pred is None:
        return 0.0
    if not pred and not truth:
        return 1.0
    matched = greedy_matches([Detection(*d) for d in pred], [Detection(*d) for d in truth])
    return 2 * len(matched) / (len(pred) + len(truth))


def sample_score(row: dict) -> float:
    """The number a gallery sorts by: REC IoU, detection F1@0.5, GUI defect reward, answer 0/1."""
    kind = row.get("kind")
    if kind == "rec":
        return float(row.get("iou") or 0.0)
    if kind == "detection":
        return detection_f1(row.get("pred"), row.get("truth") or [])
    if kind == "gui":
        return float(row.get("score") or 0.0)
    return 1.0 if row.get("correct") else 0.0


def pick_gallery(rows: list[dict], n: int) -> list[tuple[str, dict]]:
    """The ``n`` best then the ``n`` worst rows, all in descending score, none twice.

    Ties keep file order (a stable sort). Splits with at most 2n rows are shown whole.
    """
    ranked = sorted(rows, key=sample_score, reverse=True)
    if len(ranked) <= 2 * n:
        return [("best" if i < (len(ranked) + 1) // 2 else "worst", r) for i, r in enumerate(ranked)]
    return [("best", r) for r in ranked[:n]] + [("worst", r) for r in ranked[-n:]]


# ---------------------------------------------------------------- HTML


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else ("-" if v is None else _e(v))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def config_highlights(cfg: dict, rows: list[dict], summary: dict) -> list[list]:
    """The settings a reader asks about first; GRPO-only ones are left out of SFT runs."""
    get = lambda section, name: (cfg.get(section) or {}).get(name)  # noqa: E731
    grpo = any("reward" in r for r in rows)
    run = "GRPO (vlmr1 train)" if grpo else ("SFT (vlmr1 sft)" if any("loss" in r for r in rows) else "unknown: no training lines")
    if not cfg:
        return [["run", run], ["config", "no config.yaml in the run folder"]]
    data = get("data", "train_files")
    if data == "embedded":
        data = f"embedded synthetic {get('data', 'synthetic')} ({get('data', 'num_train')} train, {get('data', 'num_eval')} per eval split)"
    funcs = get("reward", "funcs") or []
    weights = get("reward", "weights") or [1.0] * len(funcs)
    items = [
        ["run", run],
        ["model", get("model", "path")],
        ["fine-tuning", f"LoRA r={get('model', 'lora_rank')}" if get("model", "lora_rank") else "full"],
        ["data", data],
        ["task template", get("data", "task")],
        ["steps", get("train", "steps")],
        ["prompts per step", get("train", "prompts_per_step")],
        ["lr", f"{get('train', 'lr')} ({get('train', 'lr_schedule')})"],
    ]
    if grpo:
        items += [
            ["group size", get("rollout", "group_size")],
            ["algo", ", ".join(f"{k}={v}" for k, v in (cfg.get("algo") or {}).items())],
            ["rewards", ", ".join(f"{f} x{w}" for f, w in zip(funcs, weights))],
        ]
    if "train_seconds" in summary:
        items.append(["train seconds", round(float(summary["train_seconds"]), 1)])
    steps = [r["step"] for r in rows if "loss" in r]
    items.append(["last logged step", max(steps) if steps else None])
    return [[k, v if v is not None and v != "" else "-"] for k, v in items]


def before_after(summary: dict) -> str:
    rows = before_after_rows(summary)
    if not rows:
        return "<p class=note>No before/after evaluation in summary.json.</p>"
    cells = [[split, metric, b, a, None if change is None else f"{change:+.3f}"] for split, metric, b, a, change in rows]
    return _table(["split", "metric", "before", "after", "change"], cells)


def _training_html(rows: list[dict], out: Path) -> str:
    parts = []
    reward_keys = ["reward"] + sorted({k for r in rows for k in r if k.startswith("rewards/")})
    rewards = [(k, series(rows, k)) for k in reward_keys if series(rows, k)]
    if rewards:
        plot_panels(rewards, out / "train_rewards.png")
        parts.append('<h3>Rewards</h3><img class=plot src="train_rewards.png" alt="reward curves">')
    else:
        parts.append("<p class=note>No reward lines in metrics.jsonl (an SFT run): reward curves skipped.</p>")
    other = [(k, series(rows, k)) for k in ("completion_length", "loss", "kl") if series(rows, k)]
    if other:
        plot_panels(other, out / "train_other.png")
        names = ", ".join(k.replace("_", " ") for k, _ in other)
        parts.append(f'<h3>{_e(names.capitalize())}</h3><img class=plot src="train_other.png" alt="{_e(names)} curves">')
    elif not rewards:
        parts.append("<p class=note>No training lines in metrics.jsonl.</p>")
    return "".join(parts)


def _evaluation_html(rows: list[dict], out: Path) -> str:
    splits = eval_series(rows)
    if not splits:
        return "<p class=note>No evaluation lines in metrics.jsonl.</p>"
    plot_eval(splits, out / "eval_curves.png")
    return '<img class=plot src="eval_curves.png" alt="evaluation curves">'


def _card(row: dict, group: str, rank: int, img: str | None) -> str:
    kind = row.get("kind", "answer")
    score = sample_score(row)
    wide = " wide" if len(row.get("image") or []) > 1 else ""
    parts = [f'<div class="card {group}{wide}" data-score="{score:.6f}">']
    if img:
        parts.append(f'<img src="{_e(img)}" alt="sample {_e(row.get("id"))}">')
    if kind in ("rec", "detection", "gui"):
        parts.append(
            f'<div class=legend><span class=sw style="background:rgb{PRED}"></span>predicted '
            f'<span class=sw style="background:rgb{TRUE}"></span>true</div>'
        )
    shown = ("correct" if score else "wrong") if kind == "answer" else f"{SCORE_NAMES.get(kind, 'score')} {score:.3f}"
    parts.append(f"<div class=meta><b>#{rank}</b> {_e(shown)} &middot; {_e(row.get('id'))}</div>")
    fields = [("query", row.get("problem")), ("completion", row.get("completion"))]
    if kind == "answer":
        fields += [("predicted answer", answer_content(str(row.get("completion", ""))).strip()), ("true answer", row.get("solution"))]
    elif kind == "gui":
        fields.append(("defect", f"predicted {row.get('pred_defect')}, true {row.get('true_defect')}"))
    else:
        fields.append(("solution", row.get("solution")))
    for label, text in fields:
        parts.append(f"<div class=lbl>{_e(label)}</div><pre>{_e(text)}</pre>")
    return "".join(parts) + "</div>"


def _gallery_html(run_dir: Path, out: Path, n: int) -> str:
    files = latest_predictions(run_dir)
    if not files:
        return "<p class=note>No evaluation predictions (no eval/*.jsonl in the run folder).</p>"
    (out / "gallery").mkdir(parents=True, exist_ok=True)
    parts = [
        "<p class=note>Sorted by the per-sample score: IoU for REC, F1 at IoU 0.5 with matching labels for "
        "detection, the gui_defect reward for GUI, 1/0 (correct or not) for answers. Best first, then the worst.</p>"
    ]
    for split, (tag, path) in files.items():
        rows = read_metrics(path)  # a predictions file is JSONL too
        picked = pick_gallery(rows, n)
        parts.append(f"<h3>split {_e(split)}: {_e(path.name)} ({_e(tag)}, {len(rows)} samples, showing {len(picked)})</h3>")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", split)
        for group in ("best", "worst"):
            chosen = [(i, r) for i, (g, r) in enumerate(picked) if g == group]
            if not chosen:
                continue
            parts.append(f"<h4>{group}</h4><div class=grid>")
            for i, row in chosen:
                image = render_sample([resolve_image(p, run_dir) for p in row.get("image") or []], row_boxes(row))
                name = None
                if image is not None:
                    name = f"gallery/{safe}-{i + 1:03d}.png"
                    image.save(out / name)
                parts.append(_card(row, group, i + 1, name))
            parts.append("</div>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1240px;
 color:#1d1d1f;padding:0 16px;line-height:1.4}
h1{font-size:24px;margin-bottom:4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin:18px 0 8px}h4{margin:12px 0 6px;color:#555;text-transform:uppercase;font-size:12px}
.row{display:flex;flex-wrap:wrap;gap:20px;align-items:flex-start}
table{border-collapse:collapse;margin:8px 0;font-size:13px;max-width:720px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;overflow-wrap:anywhere}th{background:#f3f3f3}
td:first-child{white-space:nowrap}
img.plot{max-width:100%;border:1px solid #eee}.note{color:#666;font-style:italic}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:10px;background:#fafafa;min-width:0}
.card.best{border-top:4px solid #2a9d4b}.card.worst{border-top:4px solid #d33}.card.wide{grid-column:span 2}
.card img{max-width:100%;display:block;margin-bottom:6px;image-rendering:pixelated}
.meta{font-size:13px;margin:4px 0}.legend{font-size:12px;color:#444}
.sw{display:inline-block;width:11px;height:11px;margin:0 4px 0 8px;vertical-align:-1px;border-radius:2px}
.legend .sw:first-child{margin-left:0}.lbl{font-size:11px;color:#777;margin-top:6px;text-transform:uppercase}
pre{white-space:pre-wrap;word-break:break-word;background:#fff;border:1px solid #eee;padding:4px 6px;margin:2px 0;
 font-size:12px;max-height:7.5em;overflow:auto}
"""


def write_report(run_dir: str | Path, out: str | Path | None = None, gallery: int = 8) -> Path:
    """Write ``index.html`` and its PNGs to ``out`` (default RUN_DIR/report); returns index.html."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run folder")
    if gallery < 0:
        raise ValueError(f"gallery={gallery}: expected a number of samples >= 0")
    out = Path(out) if out is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    cfg_file = run_dir / "config.yaml"
    cfg = (yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.exists() else {}
    no_metrics = "" if rows else "<p class=note>No metrics.jsonl in the run folder.</p>"
    body = [
        f"<h1>vlmr1 run report</h1><p class=note>{_e(run_dir.resolve())}</p>",
        "<h2>Run summary</h2>",
        "<div class=row>",
        _table(["setting", "value"], config_highlights(cfg, rows, summary)),
        before_after(summary) if summary else "<p class=note>No summary.json (the run did not finish).</p>",
        "</div>",
        "<h2>Training curves</h2>",
        no_metrics or _training_html(rows, out),
        "<h2>Evaluation curves</h2>",
        no_metrics or _evaluation_html(rows, out),
        "<h2>Rollouts</h2>",
        rollouts_html(run_dir, out, rows, resolve_image),
        "<h2>Gallery</h2>",
        _gallery_html(run_dir, out, gallery) if gallery else "<p class=note>Gallery off (--gallery 0).</p>",
    ]
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>vlmr1 report: {_e(run_dir.name)}</title><style>{CSS}{ROLLOUTS_CSS}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page)
    return index
