"""Dynamic sampling (vlmr1.rl.dynamic_sampling): the kept-group rule by hand, the refill loop on
hand-made rounds, two gloo processes equal to one, and a SIGKILLed run resuming bitwise."""

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_distributed import _launch, _overrides, _train_rows
from test_kill_resume import (
    assert_same_weights,
    finish,
    kill,
    overrides,
    start_train,
    train_steps,
    wait_for,
)

from vlmr1.data.batch import Batch
from vlmr1.models.adapter import PromptBatch
from vlmr1.rewards import RewardOutput
from vlmr1.rl.dynamic_sampling import Draw, keep_first, refill, refill_seed
from vlmr1.rl.rollout import Rollout, Sampling

# Flat (all 0) for prompts whose sample id has an odd CRC, the length of the completion otherwise:
# about half the groups carry no signal, so steps need extra rounds.
REWARD = '''
import os, time, zlib
from pathlib import Path

calls = 0


def half_flat_reward(completions, sample_id, **kw):
    global calls
    calls += 1
    if calls == int(os.environ.get("HOLD_AT_CALL", "0")):
        Path(os.environ["HELD_FLAG"]).touch()
        time.sleep(600)
    return [0.0 if zlib.crc32(s.encode()) % 2 else float(len(c)) for c, s in zip(completions, sample_id)]
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "flat.py"
    path.write_text(REWARD)
    return path


# ---------------------------------------------------------------- keep_first


@pytest.mark.parametrize(
    "flags, target, kept",
    [
        ([1, 0, 1, 1, 0, 1], 3, [1, 0, 1, 1, 0, 0]),  # the 3rd informative group fills the step; the 4th is spare
        ([1, 0, 1, 1, 0, 1], 10, [1, 0, 1, 1, 0, 1]),  # budget spent first: every informative group
        ([0, 0, 0, 0], 2, [0, 0, 0, 0]),  # nothing informative
        ([1, 1, 1, 1], 0, [0, 0, 0, 0]),  # nothing wanted
        ([0, 1, 1, 0, 1, 1, 1, 1], 4, [0, 1, 1, 0, 1, 1, 0, 0]),  # round 1 = [0 1 | 1 0] (2 ranks x 2), round 2 = [1 1 | 1 1]
    ],
)
def test_keep_first(flags, target, kept):
    assert keep_first(torch.tensor(flags, dtype=torch.bool), target).long().tolist() == kept


def test_refill_seeds_are_distinct():
    seeds = {refill_seed(0, s, r, k) for s in range(20) for r in range(4) for k in range(1, 4)}
    assert len(seeds) == 20 * 4 * 3 and refill_seed(0, 1, 0, 1) == refill_seed(0, 1, 0, 1)


# ---------------------------------------------------------------- refill on hand-made rounds

G = 2


def fake_draw(tag: str, rewards: list[float], width: int) -> Draw:
    """P = len(rewards) / G groups; completion row i is [10 * i + 1, ..., ] of ``width`` tokens, named tag+i."""
    n = len(rewards)
    ids = torch.arange(n * width).view(n, width) + 1
    samples = [SimpleNamespace(id=f"{tag}{i}") for i in range(n // G)]
    batch = Batch(samples, [f"q{tag}{i}" for i in range(n // G)], [[] for _ in range(n // G)], {"sample_id": [s.id for s in samples]})
    prompts = PromptBatch(torch.zeros(n // G, 1, dtype=torch.long), torch.ones(n // G, 1, dtype=torch.long), {})
    rollout = Rollout(prompts, ids, torch.ones(n, width, dtype=torch.long), torch.zeros(n, dtype=torch.bool), [f"{tag}{i}" for i in range(n)], Sampling(max_new_tokens=width), G)
    total = torch.tensor(rewards)
    return Draw(batch, rollout, RewardOutput(total[:, None], total, ["r"]))


class FakeAdapter:
    pad_token_id = 0

    def encode_prompts(self, problems, images):
        return PromptBatch(torch.full((len(problems), 1), 7), torch.ones(len(problems), 1, dtype=torch.long), {}, [[] for _ in problems])


ONE_RANK = SimpleNamespace(num_processes=1, process_index=0, device=torch.device("cpu"), gather=lambda t: t)


def test_refill_keeps_the_first_informative_groups_across_rounds():
    # P = 3 groups of G = 2. Round 0: groups [flat, informative, flat] -> 1 of 3
    # round 1: [informative, flat, informative] -> 3 found, target 3 reached: stop, keep a1 and c1
    first = fake_draw("a", [1, 1, 0, 1, 2, 2], width=2)
    rounds = {1: fake_draw("b", [0, 1, 3, 3, 5, 4], width=3), 2: fake_draw("c", [0, 1, 0, 1, 0, 1], width=1)}
    drawn = []
    out, stats = refill(first, lambda k: drawn.append(k) or rounds[k], ONE_RANK, 5, G, FakeAdapter())
    assert drawn == [1]  # round 2 never drawn
    assert [s.id for s in out.batch.samples] == ["a1", "b0", "b2"]
    assert out.rollout.texts == ["a2", "a3", "b0", "b1", "b4", "b5"]
    assert out.rewards.total.tolist() == [0, 1, 0, 1, 5, 4]
    # round 0's rows are 2 wide, round 1's 3: round 0's rows padded with pad 0 and mask 0
    assert out.rollout.completion_ids[0].tolist() == [5, 6, 0] and out.rollout.completion_mask[0].tolist() == [1, 1, 0]
    assert out.rollout.completion_ids[2].tolist() == [1, 2, 3]
    assert out.rollout.prompts.input_ids.shape == (3, 1)  # encoded again, one row per kept prompt
    assert stats == {"dynamic_sampling/rounds": 1.0, "dynamic_sampling/prompts_drawn": 6.0, "dynamic_sampling/informative_groups": 3.0, "dynamic_sampling/kept_groups": 3.0}


def test_refill_stops_at_the_budget_and_keeps_a_flat_group_when_nothing_is_informative():
    # every round flat: budget 2 spent (rounds 1 and 2 drawn); no informative group -> round 0's group 0 kept
    # (outside the update: it has zero spread, so filter_zero_std drops it)
    flat = fake_draw("a", [1, 1, 2, 2], width=2)
    out, stats = refill(flat, lambda k: fake_draw("bc"[k - 1], [3, 3, 0, 0], width=2), ONE_RANK, 2, G, FakeAdapter())
    assert [s.id for s in out.batch.samples] == ["a0"] and out.rewards.total.tolist() == [1, 1]
    assert stats["dynamic_sampling/rounds"] == 2.0 and stats["dynamic_sampling/informative_groups"] == 0.0
    assert stats["dynamic_sampling/kept_groups"] == 0.0 and stats["dynamic_sampling/prompts_drawn"] == 6.0


def test_refill_returns_round_zero_untouched_when_it_is_all_informative():
    first = fake_draw("a", [0, 1, 2, 3], width=2)
    out, stats = refill(first, lambda k: pytest.fail("no extra round needed"), ONE_RANK, 3, G, FakeAdapter())
    assert out is first and stats["dynamic_sampling/rounds"] == 0.0


# ---------------------------------------------------------------- end to end

DS = ["algo.filter_zero_std=true", "algo.dynamic_sampling_rounds=3"]


def test_two_processes_equal_one_process(tiny_dir, reward_file, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [*DS, f"reward.funcs=[{reward_file}:half_flat_reward]"]
    _launch(1, _overrides(tiny_dir, reward_file, one, 4, extra))  # 4 prompts x G per round on one rank
    _launch(2, _overrides(tiny_dir, reward_file, two, 2, extra))  # the same 4 per round, 2 per rank
    rows_one, rows_two = _train_rows(one), _train_rows(two)
    assert [r["step"] for r in rows_one] == [r["step"] for r in rows_two] == [1, 2]
    assert sum(r["dynamic_sampling/rounds"] for r in rows_one) >= 1  # the refill really ran
    for a, b in zip(rows_one, rows_two):
        for key in ("rounds", "prompts_drawn", "informative_groups", "kept_groups"):
            assert a[f"dynamic_sampling/{key}"] == b[f"dynamic_sampling/{key}"]
        assert a["zero_std_groups"] == b["zero_std_groups"] == 0.0  # only informative groups trained on
        assert a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    w1, w2 = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-5  # the tolerance of test_distributed


@pytest.fixture
def spawned():
    procs = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkilled_run_resumes_bitwise(tiny_dir, reward_file, tmp_path, spawned):
    args = [*DS, f"reward.funcs=[{reward_file}:half_flat_reward]", "train.resume=auto"]
    ref, out, log = tmp_path / "ref", tmp_path / "run", tmp_path / "train.log"
    finish(start_train(spawned, overrides(tiny_dir, reward_file, ref, *args), tmp_path / "ref.log"), tmp_path / "ref.log")
    rows = [r for r in _train_rows(ref)]
    assert sum(r["dynamic_sampling/rounds"] for r in rows) >= 2  # several steps refilled
    # Hold in the 7th reward call (a step part-way through its rounds), kill, resume with the same command.
    proc = start_train(spawned, overrides(tiny_dir, reward_file, out, *args), log, HOLD_AT_CALL="7", HELD_FLAG=str(tmp_path / "held"))
    wait_for(tmp_path / "held", proc, log)
    kill(proc)
    done = train_steps(out)
    assert 1 <= len(done) < 6
    finish(start_train(spawned, overrides(tiny_dir, reward_file, out, *args), log), log)
    assert train_steps(out) == [1, 2, 3, 4, 5, 6]
    assert (out / "rollouts.jsonl").read_text().replace(str(out), "RUN") == (ref / "rollouts.jsonl").read_text().replace(str(ref), "RUN")
    assert_same_weights(out / "final", ref / "final")
