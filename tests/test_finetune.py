"""Fine-tuning modes on the tiny model: LoRA (only adapters train, reference = adapters off,
merged export equals the adapter model), frozen vision tower / projector, gradient checkpointing."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from vlmr1.cli import main
from vlmr1.config import load_config
from vlmr1.models.loading import load_adapter
from vlmr1.models.finetune import is_peft, projector_parameters, vision_tower_parameters
from vlmr1.rl.logprobs import completion_logprobs
from vlmr1.rl.trainer import train
from vlmr1.models.loading import load_model

REWARD = "def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n"


def _config(tiny_dir, tmp_path, out, *extra):
    reward = tmp_path / "r.py"
    reward.write_text(REWARD)
    return load_config(
        None,
        [
            f"model.path={tiny_dir}", "data.num_train=8", "data.num_eval=0", "train.prompts_per_step=2",
            "rollout.group_size=4", "rollout.max_completion_length=8", "train.micro_batch_size=8", "train.steps=2",
            "train.lr=1e-2", "train.progress=false", f"train.output_dir={out}", f"reward.funcs=[{reward}:length_reward]",
            "reward.weights=null", *extra,
        ],
    )


def _fixed_input(adapter, make_image):
    prompts = adapter.encode_prompts(["Before: <image> After: <image> Same?", "Where is it?"], [[make_image(1), make_image(2)], [make_image(3)]])
    ids = adapter.encode_completions(["[1, 2, 3, 4]", "left"])
    mask = (ids != adapter.pad_token_id).long()
    return adapter.sequence_inputs(prompts, ids, mask), ids


@pytest.fixture(scope="module")
def lora_run(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    out = tmp / "run"
    train(_config(tiny_dir, tmp, out, "model.lora_rank=4", "model.lora_alpha=8"))
    return out


def test_lora_trains_only_adapters_and_saves_them_alone(lora_run, tiny_dir):
    final = lora_run / "final"
    assert (final / "adapter_config.json").exists() and not (final / "model.safetensors").exists()
    saved = load_file(final / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert not any("visual" in k for k in saved)  # vision tower excluded by default
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in saved.items())  # B starts at 0: it trained
    # Reloaded, the base weights under the adapters are exactly the starting checkpoint's.
    base = dict(load_adapter(tiny_dir).model.named_parameters())
    cfg = load_config(None, [f"model.path={tiny_dir}"])
    policy = load_model(cfg, final, trainable=False)
    assert is_peft(policy.model)
    under = {
        n.removeprefix("base_model.model.").replace(".base_layer.", "."): p
        for n, p in policy.model.named_parameters()
        if "lora_" not in n
    }
    assert under.keys() == base.keys()
    assert all(torch.equal(under[n], base[n]) for n in base)


def test_lora_reference_is_the_base_with_adapters_off(lora_run):
    # No second model was loaded for the reference (one "Loading weights" per run would show it
    # in timings; here: step 1's KL is 0, since the adapters start as the identity, then grows).
    rows = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert abs(rows[0]["kl"]) < 1e-7 and rows[1]["kl"] > 1e-7


def test_merged_export_reproduces_the_adapter_model(lora_run, tmp_path, make_image):
    out = tmp_path / "merged"
    main(["export", str(lora_run / "final"), "--out", str(out), "--merge-lora"])
    cfg = load_config(None, [])
    lora = load_model(cfg, lora_run / "final", trainable=False)
    merged_model = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)  # plain HF load
    inputs, ids = _fixed_input(lora, make_image)
    with torch.no_grad():
        a = completion_logprobs(lora.model, inputs, ids)
        b = completion_logprobs(merged_model.eval(), inputs, ids)
    assert (a - b).abs().max().item() <= 1e-5


def test_target_modules_are_honoured_as_given(tiny_dir, tmp_path):
    cfg = load_config(None, [f"model.path={tiny_dir}", "model.lora_rank=2", "model.lora_target_modules=[q_proj]"])
    adapter = load_model(cfg, tiny_dir, fresh_lora=True)
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in adapter.model.named_parameters() if ".lora_A." in n}
    assert wrapped and all(n.endswith("q_proj") and "visual" not in n for n in wrapped)
    trainable = [n for n, p in adapter.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # lora_vision=true reaches the vision blocks' matching modules too.
    cfg = load_config(None, [f"model.path={tiny_dir}", "model.lora_rank=2", "model.lora_target_modules=[qkv]", "model.lora_vision=true"])
    adapter = load_model(cfg, tiny_dir, fresh_lora=True)
    assert any("visual" in n and ".lora_A." in n for n, _ in adapter.model.named_parameters())


@pytest.mark.parametrize("projector_too", [False, True])
def test_frozen_vision_stays_bit_identical(tiny_dir, tmp_path, projector_too):
    out = tmp_path / "run"
    extra = ["model.freeze_vision=true", *(["model.freeze_projector=true"] if projector_too else [])]
    train(_config(tiny_dir, tmp_path, out, *extra))
    start, final = load_file(tiny_dir / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    changed = {k for k in start if not torch.equal(start[k], final[k])}
    tower = {k for k in start if k.startswith("visual.") and not k.startswith("visual.merger.")}
    merger = {k for k in start if k.startswith("visual.merger.")}
    assert not changed & tower  # the vision encoder did not move
    assert any(k.startswith("model.") for k in changed)  # the language model did
    assert (not changed & merger) if projector_too else bool(changed & merger)


def test_vision_and_projector_parameters_partition_the_visual_module(tiny_adapter):
    tower, proj = vision_tower_parameters(tiny_adapter), projector_parameters(tiny_adapter)
    visual = list(tiny_adapter.model.model.visual.parameters())
    assert {id(p) for p in tower} | {id(p) for p in proj} == {id(p) for p in visual}
    assert not {id(p) for p in tower} & {id(p) for p in proj} and proj


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, make_image):
    # Same loss, same gradients: checkpointing only recomputes activations.
    grads = []
    for checkpointing in (False, True):
        cfg = load_config(None, [f"model.path={tiny_dir}", f"model.gradient_checkpointing={str(checkpointing).lower()}"])
        adapter = load_model(cfg, tiny_dir)
        adapter.model.train()
        inputs, ids = _fixed_input(adapter, make_image)
        completion_logprobs(adapter.model, inputs, ids).sum().backward()
        grads.append({n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-5, atol=1e-6)
