"""pass@k: the unbiased estimator by hand, per-kind correctness, and ``vlmr1 eval --samples`` end to end."""

import json

import pytest

from vlmr1.cli import main
from vlmr1.pass_at_k import ks_for, pass_at_k, success, summarise


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 0.25),  # 1 - C(3,1)/C(4,1) = 1 - 3/4
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 3, 2, 1.0),  # n - c = 1 < k: every pair holds a correct answer
        (4, 0, 4, 0.0),  # nothing correct
        (16, 1, 8, 0.5),  # 1 - C(15,8)/C(16,8) = 1 - 6435/12870
        (16, 2, 4, 0.45),  # 1 - C(14,4)/C(16,4) = 1 - 1001/1820 = 819/1820
    ],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_ks_and_summary():
    assert ks_for(16) == [1, 2, 4, 8, 16] and ks_for(6) == [1, 2, 4, 6] and ks_for(1) == [1]
    # prompts with 1, 2 and 0 of 4 correct:
    #   pass@1 = (0.25 + 0.5 + 0) / 3 = 0.25; pass@2 = (0.5 + 5/6 + 0) / 3 = 0.444444
    #   pass@4 = (1 + 1 + 0) / 3 = 0.666667; mean@4 = 3 / 12 = 0.25 (= pass@1, as it must)
    got = summarise([1, 2, 0], 4)
    assert got == pytest.approx({"pass@1": 0.25, "pass@2": (0.5 + 5 / 6) / 3, "pass@4": 2 / 3, "mean@4": 0.25})


def test_success_per_kind():
    assert success("rec", {"hit": True}) and not success("rec", {"hit": False})
    assert success("answer", {"correct": True}) and not success("answer", {"correct": False})
    assert success("gui", {"type_correct": True, "iou": None})  # "no defect", rightly
    assert not success("gui", {"type_correct": True, "iou": 0.3})  # right type, region missed
    truth = [[[0, 0, 10, 10], "cat"], [[20, 20, 30, 30], "dog"]]
    assert success("detection", {"parsed": True, "pred": truth, "truth": truth})
    assert not success("detection", {"parsed": True, "pred": truth[:1], "truth": truth})  # a box missed
    assert not success("detection", {"parsed": True, "pred": truth + [[[50, 50, 60, 60], "cat"]], "truth": truth})  # one extra
    assert not success("detection", {"parsed": False, "pred": None, "truth": truth})


def test_vlmr1_eval_samples_reports_pass_at_k(tiny_dir, tmp_path, capsys):
    main(["data", "rec", "--out", str(tmp_path), "--n", "3", "--split", "in"])
    data = tmp_path / "in.jsonl"
    args = ["eval", "--model", str(tiny_dir), "--data", str(data), "--max-new-tokens", "8", "--samples", "4", "--temperature", "1.5"]
    main(args)
    printed = capsys.readouterr().out
    for metric in ("acc50", "pass@1", "pass@2", "pass@4", "mean@4"):
        assert f" {metric} " in printed
    rows = [json.loads(line) for line in (tmp_path / "in.predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(0 <= r["samples_correct"] <= 4 and r["samples_n"] == 4 for r in rows)
    first = (tmp_path / "in.predictions.jsonl").read_text()
    main(args)  # seeded: the same draws again
    assert (tmp_path / "in.predictions.jsonl").read_text() == first
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_dir), "--data", str(data), "--temperature", "0.7"])  # without --samples
