"""The vLLM rollout engine (``rollout.engine=vllm``, GPU only, ``pip install 'vlmr1[vllm]'``).

``VLLMEngine`` serves the ``RolloutEngine`` calls of ``engines.py`` with a vLLM ``LLM`` in the
training process, on the training GPU ("colocated", as TRL's ``vllm_mode="colocate"``). It is
built lazily from the checkpoint folder the policy came from, the policy's weights are pushed
into it after each step's optimizer updates, and with sleep mode it gives its memory back while
the policy trains.

UNVERIFIED ON A REAL GPU: vLLM could not be installed where this was written. The calls are
written against vLLM's documented API and mirror TRL 1.16's colocate mode (trl/generation/
vllm_generation.py, which supports vLLM 0.22-0.31); tests/test_engines.py checks the glue with a
fake ``vllm`` module. Before trusting results, run the GPU check in docs/vllm.md.

Where the vLLM engine departs from the HF one (documented in docs/vllm.md): sampled tokens differ
(another RNG and kernels; same distribution), and vLLM samples with its own dtype and kernels
while the loss uses the policy's log-probs; that small sampler/learner mismatch is not corrected
(no importance weights from vLLM's log-probs).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image

from ..models.adapter import PromptBatch
from ..models.finetune import is_lora_checkpoint, is_peft, lora_base_path
from ..models.loading import model_type
from .rollout import Rollout, Sampling, finish_rollout


VLLM_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
"""Families whose prompt format and weight names were checked against vLLM's model code: vLLM's
``hf_to_vllm_mapper`` of these classes maps the transformers names (``model.visual.``,
``model.language_model.``, ``lm_head.``) itself. Others (InternVL) are rejected, not guessed."""


def vllm_requests(adapter, problems: list[str], images: list[list[Image.Image]]) -> list[dict]:
    """One vLLM prompt dict per problem: the templated text and its PIL images (none: text only).

    The text is the adapter's ``prompt_text``, the very string its ``encode_prompts`` tokenises;
    vLLM expands each image placeholder (``<|image_pad|>``) to the image's token count with the
    model's own HF processor, as the adapter's processor does.

    A single image is passed bare and several as a list, the form vLLM's multimodal examples
    and TRL use."""
    requests = []
    for problem, ims in zip(problems, images, strict=True):
        request: dict = {"prompt": adapter.prompt_text(problem, len(ims))}
        if ims:
            request["multi_modal_data"] = {"image": ims[0] if len(ims) == 1 else list(ims)}
        requests.append(request)
    return requests


def allowed_token_ids(adapter) -> list[int]:
    """Every token but the suppressed ones (image placeholders): vLLM's hard mask, as HF's
    ``suppress_tokens``. Bounded by the tokenizer's length, the bound some vLLM versions check;
    the embedding's padding rows beyond it are never valid output anyway."""
    vocab = min(len(adapter.tokenizer), adapter.model.config.get_text_config().vocab_size)
    banned = set(adapter.suppressed_token_ids)
    return [i for i in range(vocab) if i not in banned]


def sampling_kwargs(s: Sampling, group_size: int, eos_ids: list[int], allowed: list[int], seed: int) -> dict:
    """``vllm.SamplingParams`` arguments for one prompt: G samples, every option stated.

    top_k 0 means "off" in the vLLM releases this engine targets (>= 0.22; older ones wanted -1),
    as in ``Sampling``. vLLM gives child j of an n-sample
    request the seed ``seed + j``, so prompt seeds are spaced G apart (``request_seeds``). The
    engine decodes the texts with the adapter's tokenizer, as the HF path does, so vLLM's
    detokeniser is off."""
    return dict(
        n=group_size,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        min_p=0.0,
        repetition_penalty=s.repetition_penalty,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        max_tokens=s.max_new_tokens,
        min_tokens=0,
        seed=seed,
        stop_token_ids=list(eos_ids),
        allowed_token_ids=allowed,
        detokenize=False,
    )


def request_seeds(step_seed: int, n_prompts: int, group_size: int) -> list[int]:
    """Seed of each prompt's request; with vLLM's ``+ j`` per child every completion of the
    step gets its own seed, and steps do not overlap (the step seed is scaled by P*G)."""
    base = step_seed * n_prompts * group_size
    return [base + i * group_size for i in range(n_prompts)]


def check_prompt_ids(prompts: PromptBatch, outputs) -> None:
    """vLLM must have sampled from the very prompt the trainer scores: same token ids."""
    for i, out in enumerate(outputs):
        got = out.prompt_token_ids
        if got is None:
            continue
        expected = prompts.input_ids[i][prompts.attention_mask[i].bool()].tolist()
        if list(got) != expected:
            first = next((k for k, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            raise RuntimeError(
                f"vLLM encoded prompt {i} as {len(got)} tokens, the adapter as {len(expected)} (first difference at "
                f"token {first}): its completions would be scored under another prompt. Image token counts differ "
                "when vLLM's image processor resizes differently (model.min_pixels / model.max_pixels are passed "
                "to it as mm_processor_kwargs); use rollout.engine=hf."
            )


def rollout_from_outputs(adapter, prompts: PromptBatch, outputs, sampling: Sampling, group_size: int) -> Rollout:
    """vLLM's P ``RequestOutput`` (in prompt order) -> a Rollout whose row i*G+j is prompt i's j-th.

    Completions are right-padded and masked up to and including the first EOS by the same code
    as the HF path (``rollout.finish_rollout``). vLLM keeps the stop token in ``token_ids`` (its
    scheduler appends a token before checking it); a "stop" without one is refused, since a
    missing EOS would silently turn a finished completion into a truncated one."""
    if len(outputs) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
    eos = set(adapter.eos_token_ids)
    rows: list[list[int]] = []
    for i, out in enumerate(outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != group_size:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for prompt {i}, expected {group_size}")
        for c in completions:
            ids = list(c.token_ids)
            if c.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM completion {c.index} of prompt {i} ended with {c.finish_reason!r}")
            if c.finish_reason == "stop" and (not ids or ids[-1] not in eos):
                raise RuntimeError(f"vLLM completion {c.index} of prompt {i} stopped without an EOS token in its ids")
            rows.append(ids)
    width = max(len(r) for r in rows)
    pad = adapter.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=prompts.input_ids.device)
    return finish_rollout(adapter, prompts, ids, sampling, group_size)  # [P*G, Lc]


_PEFT_PREFIX = "base_model.model."


def weights_for_vllm(model, full: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs for vLLM's ``load_weights``: transformers' parameter names, which
    vLLM's model classes map to their own (``hf_to_vllm_mapper``), as TRL sends them.

    ``full``: every parameter (a fresh engine loaded the checkpoint on disk, which may not be the
    policy). Otherwise only what an optimizer step can have changed: trainable parameters and
    LoRA-merged weights; the rest is still in vLLM (sleep level 1 keeps weights).

    LoRA (peft): each adapted layer's weight is sent merged, ``W + scale * B @ A`` for the active
    adapters, computed out of place; unlike TRL's ``merge_adapter``/``unmerge_adapter`` this never
    writes into the policy, so no rounding accumulates in the base weights. Buffers are not sent:
    vLLM computes its own (rotary tables)."""
    if not is_peft(model):
        for name, p in model.named_parameters():
            if full or p.requires_grad:
                yield name, p.detach()
        return
    lora_layers = {n: m for n, m in model.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    prefix = model.base_model.prefix  # "lora_": the adapter matrices, which vLLM does not have
    for name, p in model.named_parameters():
        if prefix in name:
            continue
        if "modules_to_save" in name or "original_module" in name:
            raise NotImplementedError(f"{name}: peft modules_to_save are not synced to vLLM")
        owner, _, leaf = name.rpartition(".base_layer.")
        layer = lora_layers.get(owner) if leaf == "weight" else None
        if layer is not None:
            delta = sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)
            yield _hf_name(name), (p + delta).detach()
        elif full or p.requires_grad:
            yield _hf_name(name), p.detach()


def _hf_name(peft_name: str) -> str:
    return peft_name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "")


def vllm_model_path(path: str | Path) -> Path:
    """The full checkpoint vLLM loads: a LoRA checkpoint's base, else the folder itself."""
    return lora_base_path(path) if is_lora_checkpoint(path) else Path(path)


# ----------------------------------------------------------------------------- vLLM: the engine


class VLLMEngine:
    """vLLM in the training process (UNVERIFIED on a real GPU; see the module docstring).

    Per step: ``wake`` (KV cache back; weights came back in the last sync) -> ``generate`` ->
    ``sleep(level=1)`` (weights offloaded to CPU, KV cache dropped) -> the policy trains ->
    ``sync_weights`` (weights back on the GPU, the changed ones overwritten, caches reset).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str,
        max_images_per_prompt: int,
        rank: int = 0,
        local_rank: int = 0,
        world_size: int = 1,
        gpu_memory_utilization: float = 0.3,
        sleep_mode: bool = True,
        mm_processor_kwargs: dict | None = None,
    ):
        self.model_path = vllm_model_path(model_path)
        kind = model_type(self.model_path)
        if kind not in VLLM_MODEL_TYPES:
            raise ValueError(f"{self.model_path}: rollout.engine=vllm supports {sorted(VLLM_MODEL_TYPES)}, not {kind!r}; use rollout.engine=hf")
        self.dtype, self.max_images, self.mm_processor_kwargs = dtype, max_images_per_prompt, mm_processor_kwargs
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.gpu_memory_utilization, self.sleep_mode = gpu_memory_utilization, sleep_mode
        self.llm = None
        self.asleep: set[str] = set()  # vLLM memory tags given up by sleep: "weights", "kv_cache"
        self._allowed: list[int] | None = None

    def _build(self):
        """The ``vllm.LLM``, built on first use (after the policy is on the GPU)."""
        import vllm

        # vLLM's external_launcher runs the model in this process (so its weights can be written
        # directly) and joins the torch.distributed world from these variables, as in TRL.
        os.environ.setdefault("RANK", str(self.rank))
        os.environ.setdefault("LOCAL_RANK", str(self.local_rank))
        os.environ.setdefault("WORLD_SIZE", str(self.world_size))
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        return vllm.LLM(
            model=str(self.model_path),
            dtype=self.dtype,  # "auto" would turn a float32 checkpoint into float16
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",
            gpu_memory_utilization=self.gpu_memory_utilization,
            enable_sleep_mode=self.sleep_mode,
            seed=self.rank,
            # Sampling defaults from the checkpoint's generation_config.json (Qwen2.5-VL: top_k=1)
            # must not leak in; every option is set per request.
            generation_config="vllm",
            limit_mm_per_prompt={"image": self.max_images},
            mm_processor_kwargs=self.mm_processor_kwargs,
        )

    def wake(self) -> None:
        if self.asleep:
            self._wake_up(sorted(self.asleep))

    def sleep(self) -> None:
        if self.llm is not None and self.sleep_mode:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake_up(self, tags: list[str]) -> None:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # vLLM allocates through the driver: free torch's cached blocks first
        self.llm.wake_up(tags=tags)
        self.asleep -= set(tags)

    def generate(self, model, adapter, prompts, group_size, sampling, *, problems, images, seed) -> Rollout:
        if not sampling.do_sample:
            raise ValueError("the vLLM engine samples GRPO rollouts; use vlmr1 eval for greedy decoding")
        if self.llm is None:
            self.llm = self._build()
            self._push(model, full=True)
        import vllm

        if self._allowed is None:
            self._allowed = allowed_token_ids(adapter)
        params = [
            vllm.SamplingParams(**sampling_kwargs(sampling, group_size, adapter.eos_token_ids, self._allowed, s))
            for s in request_seeds(seed, len(problems), group_size)
        ]
        outputs = self.llm.generate(vllm_requests(adapter, problems, images), sampling_params=params, use_tqdm=False)
        check_prompt_ids(prompts, outputs)
        return rollout_from_outputs(adapter, prompts, outputs, sampling, group_size)

    def sync_weights(self, model) -> None:
        if self.llm is not None:  # before the first generate there is nothing to update
            self._push(model, full=False)

    @torch.no_grad()
    def _push(self, model, full: bool) -> None:
        """Write the policy's weights into vLLM's model, one tensor at a time (TRL's colocate path)."""
        if "weights" in self.asleep:  # writing into offloaded weights would write into freed memory
            self._wake_up(["weights"])
        target = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        for name, tensor in weights_for_vllm(model, full):
            target.load_weights([(name, tensor)])
        # KV blocks (and, in vLLM versions that keep them, vision features) of the old weights.
        self.llm.reset_prefix_cache()
        reset_encoder = getattr(self.llm.llm_engine, "reset_encoder_cache", None)
        if reset_encoder is not None:
            reset_encoder()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def vllm_engine(cfg, accelerator, model_path: str | Path, samples) -> VLLMEngine:
    """The vLLM engine for this run, or a ConfigError for a setup it cannot serve.

    ``model_path`` is the checkpoint the policy is loaded from (a resume checkpoint or
    model.path); ``samples`` the training samples, whose largest image count sizes vLLM's
    per-prompt image budget."""
    from accelerate.utils import DistributedType

    from ..config import ConfigError

    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if (plugin is not None and plugin.zero_stage == 3) or accelerator.distributed_type == DistributedType.FSDP:
        raise ConfigError(
            "rollout.engine=vllm: the policy's weights are sharded (DeepSpeed ZeRO-3 / FSDP) and gathering them "
            "for vLLM is not implemented; use ZeRO-2 or DDP, or rollout.engine=hf"
        )
    m = cfg.model
    mm = {k: v for k, v in (("min_pixels", m.min_pixels), ("max_pixels", m.max_pixels)) if v is not None}
    return VLLMEngine(
        model_path,
        dtype=m.dtype,
        max_images_per_prompt=max((len(s.images) for s in samples), default=0),
        rank=accelerator.process_index,
        local_rank=accelerator.local_process_index,
        world_size=accelerator.num_processes,
        mm_processor_kwargs=mm or None,
    )
