"""TRL's GRPOTrainer set up to do the same work as vlmr1's, timed per optimizer step.

Same as vlmr1 (each checked before training where it can be):
- weights and processor: the policy is the model ``vlmr1.models.adapter.load_adapter`` loads, and
  the processor is that adapter's (TRL builds its reference model from the same folder);
- prompts and their order: the dataset holds the prompts in the order vlmr1's ``DataOrder``
  visits them, and TRL does not shuffle (``shuffle_dataset=False``); the token ids and pixel
  values TRL encodes for the first prompt are asserted equal to vlmr1's;
- rewards: vlmr1's own reward functions, wrapped for TRL's chat-format completions; the
  ``input_size`` column (the frame Qwen2.5-VL answers boxes in) is computed from the image
  processor's resize rule, and TRL's total reward for a set of probe completions is asserted
  equal to vlmr1's ``compute_rewards`` with vlmr1's own ``input_size`` (``box_frames``);
- sampling: the same processors (temperature, no top-k/top-p, vlmr1's four suppressed vision
  tokens) and, before each rollout, the same seed vlmr1 uses, so step 1 samples the same
  completions in all three runs (later steps differ only through the weights).
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

# Stage clock of the current optimizer step; filled by the trainer's hooks below.
STAGES = ("gen_s", "reward_s", "ref_s", "train_s")


def smart_input_size(image_size: tuple[int, int], processor) -> tuple[int, int]:
    """(w, h) of the model input for an image of ``image_size``: the image processor's own resize rule."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    ip = processor.image_processor
    w, h = image_size
    rh, rw = smart_resize(h, w, factor=ip.patch_size * ip.merge_size, min_pixels=ip.size.shortest_edge, max_pixels=ip.size.longest_edge)
    return (rw, rh)


def ordered_samples(spec: dict) -> list:
    """The samples in the order vlmr1 visits them: ``DataOrder`` of train.seed, P per step."""
    from vlmr1.data.jsonl import load_samples
    from vlmr1.data.order import DataOrder

    samples, *_ = load_samples(spec["data"], None)
    order = DataOrder(len(samples), spec["seed"], spec["workload"]["prompts"])
    return [samples[i] for step in range(spec["steps"]) for i in order.indices(step)]


def prompt_text(problem: str) -> str:
    """The text part of vlmr1's user turn; TRL puts the image before it, as vlmr1 does."""
    from vlmr1.models.adapter import user_content

    parts = user_content(problem, 1)
    if [p["type"] for p in parts] != ["image", "text"]:
        raise ValueError(f"benchmark prompts must be one image then text, got {parts}")
    return parts[1]["text"]


def build_dataset(samples: list, processor):
    """TRL rows: conversational prompt, image, and the reward columns vlmr1's trainer passes."""
    from datasets import Dataset

    from vlmr1.data.batch import make_batch

    batch = make_batch(samples, "rec")
    rows = []
    for k, problem in enumerate(batch.problems):
        image = batch.images[k][0]
        rows.append({
            "prompt": [{"role": "user", "content": prompt_text(problem)}],
            "image": image,
            "solution": batch.columns["solution"][k],
            "image_size": list(image.size),
            "input_size": list(smart_input_size(image.size, processor)),
        })
    return Dataset.from_list(rows), batch


def trl_rewards(names: list[str]) -> list:
    """vlmr1's reward functions with TRL's calling convention (completions as chat messages)."""
    from vlmr1.rewards import resolve_rewards

    wrapped = []
    for name, fn in resolve_rewards(names).items():

        def reward(prompts=None, completions=None, _fn=fn, **columns):
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            return _fn(texts, **columns)

        reward.__name__ = name
        wrapped.append(reward)
    return wrapped


def grpo_config(spec: dict, out_dir: str, suppress_tokens: list[int]):
    """TRL's GRPOConfig with every setting that differs from TRL's defaults spelled out."""
    from trl import GRPOConfig

    m, w = spec["matched"], spec["workload"]
    rows = w["prompts"] * w["group"]
    return GRPOConfig(
        output_dir=out_dir,
        # One generation round of P prompts x G completions = one optimizer step, one forward.
        per_device_train_batch_size=rows,  # TRL counts completions, not prompts
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=w["group"],
        num_iterations=1,
        shuffle_dataset=False,  # the dataset is already in vlmr1's visiting order
        max_steps=spec["steps"],
        max_completion_length=m["max_completion_length"],
        temperature=m["temperature"],
        top_p=m["top_p"],
        top_k=0,
        min_p=None,
        repetition_penalty=1.0,
        # vlmr1 suppresses the image, video and vision start/end tokens; TRL only the image token.
        generation_kwargs={"suppress_tokens": suppress_tokens},
        beta=m["beta"],
        use_bias_correction_kl=m["kl_bias_correction"],  # TRL's default True weights k3 by the ratio (algo.kl_bias_correction)
        epsilon=m["epsilon"],
        epsilon_high=m["epsilon"],
        loss_type="grpo",
        scale_rewards="group",
        importance_sampling_level="token",
        reward_weights=m["reward_weights"],
        mask_truncated_completions=False,
        learning_rate=m["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=m["max_grad_norm"],
        bf16=False,  # TRL's default is bf16; vlmr1 runs fp32
        fp16=False,
        activation_checkpointing=False,  # transformers 5's name for gradient_checkpointing: TRL's default is on, vlmr1's off
        use_vllm=False,
        use_cpu=True,
        seed=spec["seed"],
        data_seed=spec["seed"],
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        log_completions=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def make_trainer_class():
    """A GRPOTrainer subclass whose hooks time each stage and re-seed each rollout like vlmr1."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        bench_seed_fn = None
        bench_seed = 0
        bench_weights: torch.Tensor | None = None
        bench_frozen_forwards = 0

        def bench_reset(self) -> None:
            self.bench_active, self.bench_stage = False, dict.fromkeys(STAGES, 0.0)
            self.bench_prepare, self.bench_reward, self.bench_rows = 0.0, float("nan"), []
            self.bench_frozen_forwards = 0

        @contextmanager
        def bench_clock(self, stage: str):
            start = time.perf_counter()
            try:
                yield
            finally:
                if getattr(self, "bench_active", False):
                    self.bench_stage[stage] += time.perf_counter() - start

        def _generate(self, prompts):  # chat template + image processing + generate + decode
            with self.bench_clock("gen_s"):
                return super()._generate(prompts)

        def _generate_single_turn(self, *args, **kwargs):
            # vlmr1 seeds each rollout (torch.manual_seed) right before sampling; so does this.
            torch.manual_seed(self.bench_seed_fn(self.bench_seed, self.state.global_step))
            return super()._generate_single_turn(*args, **kwargs)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            with self.bench_clock("reward_s"):
                per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            self.bench_reward = torch.nansum(per_func * self.bench_weights, dim=1).mean().item()
            return per_func

        def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
            if torch.is_grad_enabled():  # the policy's forward inside compute_loss: part of training_step
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
            # Reference log-probs, and old-policy ones if TRL computed them (it does not at
            # num_iterations=1 with one step per generation: frozen_forwards stays 1 per step).
            self.bench_frozen_forwards += 1
            with self.bench_clock("ref_s"):
                return super()._get_per_token_logps_and_entropies(model, *args, **kwargs)

        def _prepare_inputs(self, generation_batch):
            start = time.perf_counter()
            out = super()._prepare_inputs(generation_batch)
            self.bench_prepare += time.perf_counter() - start
            return out

        def training_step(self, model, inputs, num_items_in_batch):
            start, before = time.perf_counter(), self.bench_prepare
            out = super().training_step(model, inputs, num_items_in_batch)
            self.bench_backward_end = time.perf_counter()
            # Policy forward + loss + backward: the training step less the rollout it prepared.
            self.bench_stage["train_s"] += (self.bench_backward_end - start) - (self.bench_prepare - before)
            return out

    class StepClock(TrainerCallback):
        """Step boundaries: memory reset at the start of training, a row at each step's end."""

        def __init__(self, trainer, probe):
            self.trainer, self.probe, self.mark = trainer, probe, 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            t = self.trainer
            if getattr(t.model, "is_activation_checkpointing", False) or args.bf16 or args.fp16:
                raise AssertionError("TRL would train with activation checkpointing or half precision; vlmr1 uses neither")
            t.bench_reset()
            t.bench_active = True
            self.probe.start_loop()
            self.mark = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            t, now = self.trainer, time.perf_counter()
            stage = dict(t.bench_stage)
            stage["train_s"] += now - t.bench_backward_end  # grad clipping, optimizer step, zero_grad
            stage["train_s"] += stage["ref_s"]
            completion = t._metrics["train"]["completions/mean_length"]
            t.bench_rows.append({
                "total_s": now - self.mark,
                **stage,
                "frozen_forwards": t.bench_frozen_forwards,
                "reward": t.bench_reward,
                "completion_length": completion[-1] if completion else float("nan"),
            })
            self.probe.step_end()
            t.bench_stage, t.bench_frozen_forwards = dict.fromkeys(STAGES, 0.0), 0
            self.mark = now

    return TimedGRPOTrainer, StepClock


def check_prompt_encoding(trainer, adapter, dataset, batch) -> dict:
    """Assert that TRL encodes the first prompt to vlmr1's token ids, grid and pixel values."""
    from trl.data_utils import prepare_multimodal_messages

    row = dataset[0]
    # As GRPOTrainer._generate_and_score_completions does with an "image" column.
    prompts = [prepare_multimodal_messages(row["prompt"], images=[row["image"]])]
    ids, _, mm = trainer._tokenize_prompts(prompts)
    ref = adapter.encode_prompts(batch.problems[:1], batch.images[:1])
    want = ref.input_ids[0][ref.attention_mask[0].bool()].tolist()
    if list(ids[0]) != want:
        raise AssertionError(f"prompt token ids differ:\n  TRL   {list(ids[0])}\n  vlmr1 {want}")
    if not torch.equal(torch.as_tensor(mm["image_grid_thw"]), ref.mm_inputs["image_grid_thw"]):
        raise AssertionError(f"image_grid_thw differs: TRL {mm['image_grid_thw']}, vlmr1 {ref.mm_inputs['image_grid_thw']}")
    diff = (torch.as_tensor(mm["pixel_values"]) - ref.mm_inputs["pixel_values"]).abs().max().item()
    if diff != 0.0:
        raise AssertionError(f"pixel_values differ by up to {diff}")
    image_tokens = int((ref.input_ids[0] == adapter.model.config.image_token_id).sum())
    return {"prompt_tokens": len(want), "image_tokens": image_tokens}


def probe_completions(solution: str, frame: tuple[int, int], image_size: tuple[int, int]) -> list[str]:
    """Answers that exercise every reward term: exact, shifted, oversized, JSON, garbage."""
    from vlmr1.rewards.grounding import parse_box, scale_box

    x1, y1, x2, y2 = scale_box(parse_box(solution), image_size, frame)  # into the frame the model answers in
    w, h = x2 - x1, y2 - y1
    box = lambda b: "[" + ", ".join(str(round(v)) for v in b) + "]"  # noqa: E731
    return [
        box([x1, y1, x2, y2]),
        box([x1 + w / 4, y1, x2 + w / 4, y2]),
        box([x1 - w / 4, y1 - h / 4, x2 + w / 4, y2 + h / 4]),
        f'[{{"bbox_2d": {box([x1, y1, x2, y2])}, "label": "x"}}]',
        "no box here",
    ]


def check_rewards(trainer, adapter, dataset, batch, spec) -> dict:
    """Assert TRL's total reward equals vlmr1's for probe completions of the first step's prompts.

    vlmr1's side is what its trainer does (make_batch columns, ``input_size`` from ``box_frames``
    of the encoded prompts, ``compute_rewards``); TRL's side is its own ``_calculate_rewards`` on
    the dataset rows, weighted as TRL weights them.
    """
    from vlmr1.models.adapter import box_frames
    from vlmr1.rewards import compute_rewards, resolve_rewards

    m, P = spec["matched"], spec["workload"]["prompts"]
    rows = [dataset[i] for i in range(P)]
    frames = box_frames(adapter, adapter.encode_prompts(batch.problems[:P], batch.images[:P]))
    if [tuple(r["input_size"]) for r in rows] != [tuple(f) for f in frames]:
        raise AssertionError(f"input_size: TRL column {[r['input_size'] for r in rows]} != vlmr1 box_frames {frames}")
    texts, columns, inputs = [], {k: [] for k in batch.columns}, []
    columns["input_size"] = []
    for k, row in enumerate(rows):
        probes = probe_completions(row["solution"], frames[k], tuple(row["image_size"]))
        texts += probes
        for key in batch.columns:
            columns[key] += [batch.columns[key][k]] * len(probes)
        columns["input_size"] += [frames[k]] * len(probes)
        inputs += [row] * len(probes)
    want = compute_rewards(resolve_rewards(m["rewards"]), m["reward_weights"], texts, columns).total
    per_func = trainer._calculate_rewards(
        inputs, [r["prompt"] for r in inputs], [[{"role": "assistant", "content": t}] for t in texts], [[0]] * len(texts)
    )
    got = torch.nansum(per_func * torch.tensor(m["reward_weights"]), dim=1)
    if not torch.equal(got, want):
        raise AssertionError(f"rewards differ:\n  TRL   {got.tolist()}\n  vlmr1 {want.tolist()}")
    return {"reward_probes": len(texts), "distinct_reward_values": sorted(set(round(v, 4) for v in want.tolist()))}


def run_trl(spec: dict, probe, seed_fn) -> dict:
    """Build TRL's trainer on vlmr1's model, processor, prompts and rewards; check; train; report."""
    import gc

    from vlmr1.models.loading import load_adapter

    torch.set_num_threads(spec["threads"])
    w, m = spec["workload"], spec["matched"]
    adapter = load_adapter(spec["model_path"], max_pixels=w.get("max_pixels"))
    dataset, batch = build_dataset(ordered_samples(spec), adapter.processor)
    trainer_cls, clock_cls = make_trainer_class()
    trainer_cls.bench_seed_fn, trainer_cls.bench_seed = staticmethod(seed_fn), spec["seed"]
    trainer_cls.bench_weights = torch.tensor(m["reward_weights"])
    trainer = trainer_cls(
        model=adapter.model,
        reward_funcs=trl_rewards(m["rewards"]),
        args=grpo_config(spec, spec["out_dir"], adapter.suppressed_token_ids),  # save_strategy="no": nothing written
        train_dataset=dataset,
        processing_class=adapter.processor,
    )
    trainer.add_callback(clock_cls(trainer, probe))
    if sorted(trainer.eos_token_ids) != sorted(adapter.eos_token_ids):
        raise AssertionError(f"stop tokens differ: TRL {trainer.eos_token_ids}, vlmr1 {adapter.eos_token_ids}")
    checks = {**check_prompt_encoding(trainer, adapter, dataset, batch), **check_rewards(trainer, adapter, dataset, batch, spec)}
    del batch  # vlmr1 loads each step's images when it needs them; TRL's dataset holds its own copies
    gc.collect()
    trainer.train()
    return {"steps": trainer.bench_rows, **probe.as_dict(), "checks": checks}
