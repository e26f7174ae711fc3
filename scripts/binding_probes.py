"""Does a REC checkpoint bind the query to the right object? Diagnostics for the embedded task.

  python scripts/binding_probes.py swap MODEL [--scenes 100] [--query-first]
      In two-shape scenes, ask for each shape in turn. A model that reads the query boxes the
      target; one that does not boxes the same shape for both queries. Hit rates on the target
      and on the other shape are split by how the two shapes relate (only colour differs, only
      the shape differs, both differ), which says which query word the model uses.
  python scripts/binding_probes.py probe MODEL [--train 1000 --test 500]
      Linear probes for a single shape's colour and kind on the vision tower's merged token at
      the shape's centre, beside the same probe on that token's raw patch mean RGB (what the
      pixels alone give a linear reader).
  python scripts/binding_probes.py colour-data OUT N [--seed 0] [--name colour]
      Writes N REC rows (OUT/NAME.jsonl, OUT/images/) of two shapes of the same kind in
      different colours, so that only the query's colour word decides.
  python scripts/binding_probes.py naming-data OUT N [--seed 0] [--name naming] [--min 1 --max 1]
      Writes N rows asking "Name the shapes from left to right." about scenes of MIN..MAX shapes;
      the answer names each ("red circle, blue square"), so the model must say what it sees.
  python scripts/binding_probes.py naming-eval MODEL ROWS [--limit 200]
      Greedy answers to naming rows: the share of scenes named exactly, and of shapes whose
      colour word and whose kind word are right (in order).

Scenes come from vlmr1's own generator with their own seeds, away from the embedded sets'.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from vlmr1.data.synthetic.rec import (
    COLOURS,
    PROMPT,
    SHAPES,
    TRAIN_PAIRS,
    background,
    place_one,
    render,
    scene,
    write_jsonl,
)
from vlmr1.infer import answer, load_for_inference
from vlmr1.rewards.grounding import iou

IMAGE = 112


def question(query: str, query_first: bool) -> str:
    """The embedded REC prompt; query_first moves the image after the words, so that the image
    tokens can attend to the query in the language model (causal attention)."""
    text = PROMPT.format(query=query).replace("<image>", "")
    return text + "<image>" if query_first else "<image>" + text


def relation(a, b) -> str:
    if a.colour == b.colour:
        return "same colour (only the shape word decides)"
    if a.shape == b.shape:
        return "same shape (only the colour word decides)"
    return "both differ"


def swap(model: str, scenes: int, query_first: bool) -> None:
    adapter = load_for_inference(model)
    tmp = Path(tempfile.mkdtemp())
    count, target_hits, other_hits = Counter(), Counter(), Counter()
    identical = asked = 0
    for i in range(scenes):
        rng = np.random.default_rng([99, 7, i])
        objects = scene(rng, 2, TRAIN_PAIRS, TRAIN_PAIRS, IMAGE, 16, 40)
        if len(objects) < 2:
            continue
        path = tmp / f"{i}.png"
        render(objects, background(rng, IMAGE, "plain")).save(path)
        boxes = []
        for k, obj in enumerate(objects):
            other = objects[1 - k]
            got = answer(
                adapter,
                [str(path)],
                question(f"the {obj.colour} {obj.shape}", query_first),
                "rec",
                24,
            )
            box = got.boxes[0][0] if got.boxes else None
            boxes.append(box)
            rel = relation(obj, other)
            count[rel] += 1
            target_hits[rel] += box is not None and iou(box, list(obj.box)) >= 0.5
            other_hits[rel] += box is not None and iou(box, list(other.box)) >= 0.5
        asked += 1
        identical += boxes[0] is not None and boxes[0] == boxes[1]
    total = sum(count.values())
    print(
        f"{model}: {asked} two-shape scenes, {total} queries, Acc@0.5 {sum(target_hits.values()) / total:.3f}"
    )
    print("| shapes relate | queries | boxes the target | boxes the other shape |")
    print("|---|---|---|---|")
    for rel in sorted(count):
        print(
            f"| {rel} | {count[rel]} | {target_hits[rel] / count[rel]:.2f} | {other_hits[rel] / count[rel]:.2f} |"
        )
    print(f"the same box for both queries in {identical} of {asked} scenes")


def centre_token(box, grid: int) -> int:
    """Index of the merged image token (row-major on a grid x grid layout) holding the box's centre."""
    cell = IMAGE / grid
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return min(int(cy // cell), grid - 1) * grid + min(int(cx // cell), grid - 1)


def linear_probe(x: torch.Tensor, y: torch.Tensor, classes: int, n_train: int) -> float:
    """Held-out accuracy of an L2-regularised softmax regression fitted on the first n_train rows."""
    x = (x - x[:n_train].mean(0)) / (x[:n_train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        loss = (
            torch.nn.functional.cross_entropy(x[:n_train] @ w + b, y[:n_train])
            + 1e-3 * w.pow(2).sum()
        )
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x[n_train:] @ w + b).argmax(1) == y[n_train:]).float().mean().item()


@torch.no_grad()
def probe(model: str, n_train: int, n_test: int) -> None:
    adapter = load_for_inference(model)
    merge = adapter.model.config.vision_config.spatial_merge_size
    feats, raw, colours, shapes = [], [], [], []
    for i in range(n_train + n_test):
        rng = np.random.default_rng([77, i])
        colour, kind = TRAIN_PAIRS[int(rng.integers(len(TRAIN_PAIRS)))]
        obj = place_one(rng, colour, kind, [], IMAGE, 16, 40, 2, 200)
        image = render([obj], background(rng, IMAGE, "plain"))
        mm = adapter.encode_prompts(["x"], [[image]]).mm_inputs
        out = adapter.model.get_image_features(
            pixel_values=mm["pixel_values"], image_grid_thw=mm["image_grid_thw"]
        )
        out = getattr(out, "pooler_output", out)
        tokens = (
            torch.cat(list(out)) if isinstance(out, (list, tuple)) else out
        )  # [merged tokens, hidden]
        k = centre_token(obj.box, round(tokens.shape[0] ** 0.5))
        # Qwen's processor lays out the merge x merge patches of one merged token consecutively.
        patches = mm["pixel_values"][merge * merge * k : merge * merge * (k + 1)]
        raw.append(patches.reshape(merge * merge, 3, -1).mean(-1).flatten().float())
        feats.append(tokens[k].float())
        colours.append(list(COLOURS).index(colour))
        shapes.append(SHAPES.index(kind))
    y_colour, y_shape = torch.tensor(colours), torch.tensor(shapes)
    print(
        f"{model}: {n_train} training / {n_test} test single shapes (chance: colour 0.17, shape 0.33)"
    )
    print("| features | colour probe | shape probe |")
    print("|---|---|---|")
    with torch.enable_grad():
        for name, rows in (
            ("vision output (merged token)", feats),
            ("raw patch mean RGB", raw),
        ):
            x = torch.stack(rows)
            print(
                f"| {name} | {linear_probe(x, y_colour, 6, n_train):.3f} | {linear_probe(x, y_shape, 3, n_train):.3f} |"
            )


def colour_data(out: Path, n: int, seed: int, name: str) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        rng = np.random.default_rng([seed, 5, i])
        colour, kind = TRAIN_PAIRS[int(rng.integers(len(TRAIN_PAIRS)))]
        others = [p for p in TRAIN_PAIRS if p[1] == kind and p[0] != colour]
        target = place_one(rng, colour, kind, [], IMAGE, 16, 40, 2, 200)
        other_colour, _ = others[int(rng.integers(len(others)))]
        other = place_one(rng, other_colour, kind, [target], IMAGE, 16, 40, 2, 200)
        if other is None:
            continue
        sid = f"{name}-{i:06d}"
        render([target, other], background(rng, IMAGE, "plain")).save(
            out / "images" / f"{sid}.png"
        )
        rows.append(
            {
                "id": sid,
                "image": f"images/{sid}.png",
                "conversations": [
                    {
                        "from": "human",
                        "value": PROMPT.format(query=f"the {colour} {kind}"),
                    },
                    {"from": "gpt", "value": json.dumps(list(target.box))},
                ],
                "accu_reward_method": "rec",
                "image_size": [IMAGE, IMAGE],
                "task": "rec",
            }
        )
    print(f"wrote {len(rows)} rows to {write_jsonl(out / f'{name}.jsonl', rows)}")


NAMING_QUESTION = "<image>Name the shapes from left to right."


def naming_data(out: Path, n: int, seed: int, name: str, lo: int, hi: int) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(1, n + 1):
        rng = np.random.default_rng([seed, 7, i])
        objects = scene(rng, int(rng.integers(lo, hi + 1)), TRAIN_PAIRS, TRAIN_PAIRS, IMAGE, 16, 40)
        sid = f"{name}-{i:06d}"
        render(objects, background(rng, IMAGE, "plain")).save(out / "images" / f"{sid}.png")
        left_to_right = sorted(objects, key=lambda o: (o.box[0] + o.box[2], o.box[1]))
        rows.append(
            {
                "id": sid,
                "image": f"images/{sid}.png",
                "conversations": [
                    {"from": "human", "value": NAMING_QUESTION},
                    {"from": "gpt", "value": ", ".join(f"{o.colour} {o.shape}" for o in left_to_right)},
                ],
                # The SFT loss ignores the method; "default" (exact answer) scores it if evaluated.
                "accu_reward_method": "default",
                "image_size": [IMAGE, IMAGE],
                "task": "rec",
            }
        )
    print(f"wrote {len(rows)} rows to {write_jsonl(out / f'{name}.jsonl', rows)}")


def naming_eval(model: str, rows_path: Path, limit: int) -> None:
    adapter = load_for_inference(model)
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()][:limit]
    exact = colour = kind = shapes = 0
    for r in rows:
        truth = r["conversations"][1]["value"].split(", ")
        got = answer(adapter, [str(rows_path.parent / r["image"])], NAMING_QUESTION, "rec", 24)
        said = got.text.strip().split(", ")
        exact += said == truth
        for t, g in zip(truth, said):
            words = g.split(" ") + ["", ""]
            colour += words[0] == t.split(" ")[0]
            kind += words[1] == t.split(" ")[1]
        shapes += len(truth)
    print(
        f"{model}: {len(rows)} scenes named exactly {exact / len(rows):.3f}; "
        f"of {shapes} shapes, colour word right {colour / shapes:.3f}, kind word right {kind / shapes:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("swap", help="ask for each shape of two-shape scenes in turn")
    p.add_argument("model")
    p.add_argument("--scenes", type=int, default=100)
    p.add_argument(
        "--query-first", action="store_true", help="put the image after the question"
    )
    p = sub.add_parser(
        "probe", help="linear probes for colour and shape on the vision tokens"
    )
    p.add_argument("model")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=500)
    p = sub.add_parser(
        "colour-data", help="two same-kind shapes: only the colour word decides"
    )
    p.add_argument("out", type=Path)
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="colour")
    p = sub.add_parser("naming-data", help="scenes whose answer names their shapes")
    p.add_argument("out", type=Path)
    p.add_argument("n", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="naming")
    p.add_argument("--min", type=int, default=1, help="fewest shapes in a scene")
    p.add_argument("--max", type=int, default=1, help="most shapes in a scene")
    p = sub.add_parser("naming-eval", help="greedy accuracy on naming rows")
    p.add_argument("model")
    p.add_argument("rows", type=Path)
    p.add_argument("--limit", type=int, default=200)
    args = parser.parse_args()
    if args.command == "swap":
        swap(args.model, args.scenes, args.query_first)
    elif args.command == "probe":
        probe(args.model, args.train, args.test)
    elif args.command == "colour-data":
        colour_data(args.out, args.n, args.seed, args.name)
    elif args.command == "naming-data":
        naming_data(args.out, args.n, args.seed, args.name, args.min, args.max)
    else:
        naming_eval(args.model, args.rows, args.limit)


if __name__ == "__main__":
    main()
