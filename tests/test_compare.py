"""vlmr1 compare: curves from metrics logs, mean and spread over seeds, equal samples seen, a real tiny study."""

import json
from pathlib import Path

import pytest

from vlmr1.compare import Study, build_study, collect, eval_curves, run_dir, run_study, table, train_seconds, write_outputs
from vlmr1.config import Config, ConfigError


def write_metrics(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def fake_run(out: Path, method: str, seed: int, in_accs: list[float], times: list[float]) -> None:
    """A run evaluated at steps 0, 2 (``eval/``) and 4 (``eval_after/``), with one training line per step."""
    rows = [{"step": 0, "eval/in/acc50": in_accs[0], "eval/in/mean_iou": 0.1}]
    for step, t in enumerate(times, start=1):
        rows.append({"step": step, "reward": 0.5, "time/gen": t, "time/update": 2 * t})
        if step == 2:
            rows.append({"step": 2, "eval/in/acc50": in_accs[1], "eval/in/mean_iou": 0.2})
    rows.append({"step": 4, "eval_after/in/acc50": in_accs[2], "eval_after/in/mean_iou": 0.3})
    write_metrics(out / f"{method}-seed{seed}" / "metrics.jsonl", rows)


def test_eval_curves_reads_eval_and_final_lines_only(tmp_path):
    fake_run(tmp_path, "sft", 0, [0.5, 0.6, 0.7], [1.0, 1.0, 1.0, 1.0])
    curves = eval_curves(tmp_path / "sft-seed0" / "metrics.jsonl")
    assert curves == {"in": {0: {"acc50": 0.5, "mean_iou": 0.1}, 2: {"acc50": 0.6, "mean_iou": 0.2}, 4: {"acc50": 0.7, "mean_iou": 0.3}}}


def test_train_seconds_sums_stage_timers(tmp_path):
    fake_run(tmp_path, "grpo", 0, [0.5, 0.6, 0.7], [1.0, 0.5, 0.25, 0.25])
    # Each step logs gen t and update 2t: 3 * (1 + 0.5 + 0.25 + 0.25) = 6.
    assert train_seconds(tmp_path / "grpo-seed0" / "metrics.jsonl") == pytest.approx(6.0)


def test_train_seconds_counts_nested_stages_once(tmp_path):
    # The trainers' time/step holds every stage of the step, evaluation included; time/save is
    # the checkpoint write outside it. Step 1: 3 s, 1 of it eval, then a 0.5 s save -> 2.5;
    # step 2: 2 s, no eval -> 2. Summing every time/* key would give 3+1+1+1+0.5+2+1+1 = 10.5.
    rows = [
        {"step": 1, "time/gen": 1.0, "time/update": 1.0, "time/eval": 1.0, "time/step": 3.0, "time/save": 0.5},
        {"step": 2, "time/gen": 1.0, "time/update": 1.0, "time/step": 2.0},
    ]
    write_metrics(tmp_path / "m.jsonl", rows)
    assert train_seconds(tmp_path / "m.jsonl") == pytest.approx(4.5)


def test_collect_gives_mean_and_spread_over_seeds(tmp_path):
    fake_run(tmp_path, "sft", 0, [0.5, 0.4, 0.3], [1.0] * 4)
    fake_run(tmp_path, "sft", 1, [0.5, 0.6, 0.5], [2.0] * 4)
    fake_run(tmp_path, "grpo", 0, [0.5, 0.6, 0.7], [1.0] * 4)
    fake_run(tmp_path, "grpo", 1, [0.5, 0.6, 0.9], [1.0] * 4)
    study = Study(tmp_path, [0, 1], {})
    res = collect(study)
    sft = res["curves"]["sft"]["in"]["acc50"]
    # step 2: seeds 0.4 and 0.6 -> mean 0.5, spread 0.2; step 4: 0.3 and 0.5 -> 0.4, 0.2.
    assert sft[2]["mean"] == pytest.approx(0.5) and sft[2]["spread"] == pytest.approx(0.2)
    assert sft[4]["mean"] == pytest.approx(0.4) and sft[4]["spread"] == pytest.approx(0.2)
    assert res["curves"]["grpo"]["in"]["acc50"][4]["mean"] == pytest.approx(0.8)
    # SFT seconds: seed 0 logs 4 * 3 = 12, seed 1 4 * 6 = 24 -> mean 18, spread 12.
    assert res["train_seconds"]["sft"]["mean"] == pytest.approx(18.0)
    assert res["train_seconds"]["sft"]["spread"] == pytest.approx(12.0)
    md = table(res)
    assert "| sft | in | 0.500 ± 0.000 | 0.500 ± 0.200 | 0.400 ± 0.200 | -0.100 |" in md
    assert "| grpo | in | 0.500 ± 0.000 | 0.600 ± 0.000 | 0.800 ± 0.200 | +0.300 |" in md
    assert "acc50" in md.splitlines()[-3]


def test_methods_must_see_the_same_samples(tmp_path):
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text("train:\n  steps: 10\n")
    data = ["data.train_files=a.jsonl", "data.eval_files=b.jsonl"]
    with pytest.raises(ConfigError, match="same number of training samples"):
        build_study(tmp_path / "s", [0], data, str(grpo), None)
    with pytest.raises(ConfigError, match="at least one seed"):
        build_study(tmp_path / "s", [], data, None, None)


def test_tiny_study_runs_both_methods_from_the_same_start(tmp_path):
    """Two steps of each method on a few samples: same step-0 evaluation, curves, table and plot."""
    from vlmr1.data.synthetic.rec import generate_rec

    data = tmp_path / "data"
    train = generate_rec(data, 8, "in", seed=1, name="train")
    evals = [generate_rec(data, 6, split, seed=2, name=split) for split in ("in", "ood")]
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text("rollout:\n  group_size: 2\n")
    overrides = [
        f"data.train_files={train}",
        f"data.eval_files={evals[0]}:{evals[1]}",
        "train.steps=2",
        "train.prompts_per_step=2",
        "train.eval_every=1",
        "train.eval_batch_size=8",
    ]
    study = build_study(tmp_path / "study", [0], overrides, str(grpo), None)
    res = run_study(study)
    paths = write_outputs(study, res)
    for method in ("sft", "grpo"):
        assert (run_dir(study, method, 0) / "final").is_dir()
        assert sorted(res["curves"][method]["in"]["acc50"]) == [0, 1, 2]
    # Same starting checkpoint and greedy decoding: identical step-0 scores.
    for split in ("in", "ood"):
        assert res["curves"]["sft"][split]["mean_iou"][0] == res["curves"]["grpo"][split]["mean_iou"][0]
    assert paths["png"].stat().st_size > 1000 and paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "| grpo | ood |" in paths["md"].read_text()
    # A second call reuses the finished runs instead of training again.
    mtime = (run_dir(study, "sft", 0) / "summary.json").stat().st_mtime
    run_study(study)
    assert (run_dir(study, "sft", 0) / "summary.json").stat().st_mtime == mtime


def test_default_data_is_narrow_in_training_and_broad_out_of_it(tmp_path):
    from vlmr1.compare import NARROW_EVAL, write_default_data

    paths = write_default_data(tmp_path, narrow_train=6)
    train = [json.loads(line) for line in Path(paths["data.train_files"]).read_text().splitlines()]
    files = paths["data.eval_files"].split(":")
    assert [Path(f).stem for f in files] == ["narrow", "broad", "ood_pairs", "ood"]
    narrow, broad, pairs, ood = ([json.loads(x) for x in Path(f).read_text().splitlines()] for f in files)
    assert len(train) == 6 and len(narrow) == len(broad) == len(pairs) == len(ood) == NARROW_EVAL
    for row in train + narrow:  # the narrow style: two shapes, each 28..40 px wide
        x1, _, x2, _ = json.loads(row["conversations"][1]["value"])
        assert row["n_objects"] == 2 and 28 <= x2 - x1 <= 40
    assert {r["n_objects"] for r in broad} == {r["n_objects"] for r in pairs} == {2, 3, 4}
    # ood_pairs: broad's scenes around colour-shape pairs that no training or broad row asks for,
    # and sample by sample the same query and box as ood, whose scenes add clutter and texture.
    query = lambda r: r["conversations"][0]["value"].rsplit("the ", 1)[1]  # noqa: E731
    assert not {query(r) for r in pairs} & {query(r) for r in train + narrow + broad}
    assert [r["conversations"][1:] + [query(r)] for r in pairs] == [r["conversations"][1:] + [query(r)] for r in ood]
    assert all(p["n_objects"] < o["n_objects"] for p, o in zip(pairs, ood))
    assert min(r["n_objects"] for r in ood) >= 4  # out of domain: two more shapes than in domain
    # A larger set extends the same samples rather than drawing new ones.
    more = write_default_data(tmp_path / "more", narrow_train=8)
    assert Path(more["data.train_files"]).read_text().splitlines()[:6] == [json.dumps(r) for r in train]


def test_default_study_follows_distinct_kinds(tmp_path):
    # data.distinct_kinds shapes the generated files; the runs then read those files, so the
    # setting must not reach them (with explicit data.train_files it would be a config error).
    full = build_study(tmp_path / "full", [0], ["data.distinct_kinds=false"], None, None, narrow_train=40)
    kinds = build_study(tmp_path / "kinds", [0], [], None, None, narrow_train=40)
    assert all(c.data.distinct_kinds == Config().data.distinct_kinds for s in (full, kinds) for c in s.configs.values())
    # Rows name only the target (drawn first, so the same); the distractors show in the images.
    images = [sorted((Path(s.configs["grpo"].data.train_files).parent / "images").glob("rec-train-*.png")) for s in (full, kinds)]
    differ = sum(x.read_bytes() != y.read_bytes() for x, y in zip(*images))
    assert len(images[0]) == 40 and differ > 5  # the full task lets a distractor share the target's kind


def test_default_study_scales_grpo_advantages_by_the_batch_std(tmp_path):
    # The base already solves most narrow prompts, so a group's rewards differ only by small IoU
    # gaps; the group's own std would blow those up to unit advantages. Only the default study
    # sets batch scaling: a study on the user's data keeps GRPO's Config default, and a --grpo
    # YAML or an override still wins.
    default = build_study(tmp_path / "d", [0], [], None, None, narrow_train=4)
    assert default.configs["grpo"].algo.advantage_scale == "batch"
    data = ["data.train_files=a.jsonl", "data.eval_files=b.jsonl"]
    own = build_study(tmp_path / "own", [0], data, None, None)
    assert own.configs["grpo"].algo.advantage_scale == Config().algo.advantage_scale == "group"
    grpo = tmp_path / "grpo.yaml"
    grpo.write_text("algo:\n  advantage_scale: none\n")
    assert build_study(tmp_path / "y", [0], [], str(grpo), None, narrow_train=4).configs["grpo"].algo.advantage_scale == "none"
    over = build_study(tmp_path / "o", [0], ["algo.advantage_scale=group"], None, None, narrow_train=4)
    assert over.configs["grpo"].algo.advantage_scale == "group"
