"""The report's "Rollouts" section: what the model wrote during training (``rollouts.jsonl``).

For the first, middle and last logged steps, each logged group: its image with the true box and
every completion's box (numbered by completion), the prompt, and the G completions side by side
with each reward, the total and the advantage. Groups with no reward spread (zero advantage
everywhere: no learning signal) are marked. Above them, the share of completions cut at the
length limit, per step, from metrics.jsonl.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path

from .eval_metrics import SCORERS, kind_of
from .report_plots import PRED, TRUE, plot_panels, render_sample, row_boxes
from .rl.rollout_log import FILE


def read_rollouts(path: Path) -> dict[int, list[dict]]:
    """step -> its lines, in file order; a line cut short by a kill is skipped."""
    steps: dict[int, list[dict]] = {}
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        steps.setdefault(int(row["step"]), []).append(row)
    return steps


def chosen_steps(steps: list[int]) -> list[int]:
    """First, middle and last of the logged steps (fewer when fewer were logged)."""
    steps = sorted(steps)
    return sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []


def group_boxes(rows: list[dict]) -> list:
    """Truth once, then each completion's prediction labelled with its index (box answers only)."""
    kind = kind_of(rows[0].get("reward_method"))
    if kind not in ("rec", "detection", "gui"):
        return []
    cols = {k: [r.get(k) for r in rows] for k in ("solution", "image_size", "input_size")}
    try:
        fields = SCORERS[kind].score_rows([r["completion"] for r in rows], cols)
    except ValueError:  # a solution the scorer cannot read: show the images without boxes
        return []
    specs = [s for s in row_boxes({"kind": kind, **fields[0]}) if s[1] == TRUE]
    for r, f in zip(rows, fields):
        specs += [(box, color, f"{r['index']}" + (f" {label}" if label else "")) for box, color, label in row_boxes({"kind": kind, **f}) if color == PRED]
    return specs


def _e(value) -> str:
    return html.escape(str(value))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"  # None: the reward does not apply to this sample


def _group_html(rows: list[dict], image: str | None) -> str:
    names = list(rows[0]["rewards"])
    spread = rows[0].get("zero_std")
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", "completion", *names, "reward", "advantage", "tokens"])
    body = []
    for r in rows:
        values = "".join(f"<td>{_score(r['rewards'][n])}</td>" for n in names)
        tokens = f"{r['length']}" + (" <b>cut</b>" if r["truncated"] else "")
        body.append(
            f"<tr><td>{r['index']}</td><td><pre>{_e(r['completion'])}</pre></td>{values}"
            f"<td>{r['reward']:.3f}</td><td>{r['advantage']:+.3f}</td><td>{tokens}</td></tr>"
        )
    mark = " <span class=flat>no reward spread: no signal from this group</span>" if spread else ""
    parts = [f"<div class=\"group{' zero' if spread else ''}\">"]
    parts.append(f"<div class=meta><b>group {rows[0]['group']}</b> &middot; {_e(rows[0]['sample_id'])}{mark}</div>")
    if image:
        parts.append(f'<img src="{_e(image)}" alt="group {rows[0]["group"]}">')
    parts.append(f"<div class=lbl>prompt</div><pre>{_e(rows[0]['problem'])}</pre>")
    parts.append(f"<div class=lbl>solution</div><pre>{_e(rows[0]['solution'])}</pre>")
    parts.append(f"<table class=rollouts><tr>{head}</tr>{''.join(body)}</table></div>")
    return "".join(parts)


def rollouts_html(run_dir: Path, out: Path, metrics: list[dict], resolve: Callable[[str, Path], Path | None]) -> str:
    """The section's HTML; images go to ``out/rollouts/``. ``resolve`` finds a recorded image path."""
    parts = []
    truncated = [(int(r["step"]), float(r["truncated_fraction"])) for r in metrics if "truncated_fraction" in r]
    if truncated:
        plot_panels([("truncated_fraction", truncated)], out / "train_truncated.png", ncols=1)
        parts.append('<h3>Completions cut at the length limit</h3><img class=plot src="train_truncated.png" alt="truncated share">')
    steps = read_rollouts(run_dir / FILE)
    if not steps:
        parts.append(f"<p class=note>No {FILE} in the run folder (train.log_completions=0, an SFT run, or an older run).</p>")
        return "".join(parts)
    (out / "rollouts").mkdir(parents=True, exist_ok=True)
    parts.append(f"<p class=note>Logged steps: {', '.join(map(str, sorted(steps)))}; shown: first, middle, last. "
                 "Boxes: the true one, and each completion's numbered by its index.</p>")
    for step in chosen_steps(list(steps)):
        parts.append(f"<h3>step {step}</h3>")
        groups: dict[int, list[dict]] = {}
        for row in steps[step]:
            groups.setdefault(row["group"], []).append(row)
        for g, rows in sorted(groups.items()):
            image = render_sample([resolve(p, run_dir) for p in rows[0].get("images") or []], group_boxes(rows))
            name = None
            if image is not None:
                name = f"rollouts/step{step}-group{g}.png"
                image.save(out / name)
            parts.append(_group_html(rows, name))
    return "".join(parts)


CSS = """
.group{border:1px solid #ddd;border-radius:6px;padding:10px;margin:10px 0;background:#fafafa}
.group.zero{border-left:4px solid #999;background:#f2f2f2}.flat{color:#a00;font-size:12px}
.group img{max-width:100%;image-rendering:pixelated;display:block;margin:6px 0}
table.rollouts{max-width:none;width:100%}table.rollouts pre{max-height:5em;margin:0}
"""
