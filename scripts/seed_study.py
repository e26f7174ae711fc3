"""Run `vlmr1 train` (the embedded default, plus any overrides) for several seeds and tabulate
held-out Acc@0.5 before and after: `python scripts/seed_study.py OUT_DIR [key=value ...]`."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEEDS = (0, 1, 2)


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    results = {}
    for seed in SEEDS:
        run = out / f"seed{seed}"
        start = time.time()
        if not (run / "summary.json").exists():
            cmd = ["vlmr1", "train", f"train.seed={seed}", f"train.output_dir={run}", "train.progress=false", *overrides]
            subprocess.run(cmd, check=True)
        results[seed] = json.loads((run / "summary.json").read_text()) | {"wall": time.time() - start}
    lines = [
        "| seed | split | Acc@0.5 before | Acc@0.5 after | change | Acc@0.75 before | Acc@0.75 after | mean IoU before | mean IoU after |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, s in results.items():
        for split in s["after"]:
            b, a = s["before"][split], s["after"][split]
            lines.append(
                f"| {seed} | {split} | {b['acc50']:.3f} | {a['acc50']:.3f} | {a['acc50'] - b['acc50']:+.3f} "
                f"| {b['acc75']:.3f} | {a['acc75']:.3f} | {b['mean_iou']:.3f} | {a['mean_iou']:.3f} |"
            )
    for split in results[SEEDS[0]]["after"]:
        after = [s["after"][split]["acc50"] for s in results.values()]
        gain = [s["after"][split]["acc50"] - s["before"][split]["acc50"] for s in results.values()]
        lines.append(
            f"\n{split}: mean gain {statistics.mean(gain):+.3f}; after-training Acc@0.5 {statistics.mean(after):.3f} "
            f"(spread over seeds, max - min: {max(after) - min(after):.3f})"
        )
    walls = [s["wall"] for s in results.values()]
    lines.append(f"\nwall time per run: {', '.join(f'{w:.0f}s' for w in walls)}")
    text = "\n".join(lines)
    print(text)
    (out / "seed_study.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
