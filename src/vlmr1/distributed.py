"""Distributed helpers: gradient sync per accumulated step, and full parameters for generation."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext


@contextmanager
def micro_batch(accelerator, model, last: bool):
    """Backward of one micro-batch of an accumulated step: gradients sync only on the ``last``.

    DDP: ``no_sync`` skips the all-reduce until the last micro-batch. DeepSpeed: accelerate's
    backward steps the engine whenever ``sync_gradients`` is set, so it is set only for the last
    (accelerate's own ``accumulate`` needs a fixed micro-batch count; ours varies when groups
    are filtered, hence the flag is set directly).
    """
    accelerator.gradient_state._set_sync_gradients(last)
    try:
        with accelerator.no_sync(model) if not last else nullcontext():
            yield
    finally:
        accelerator.gradient_state._set_sync_gradients(True)


@contextmanager
def full_parameters(accelerator, model):
    """All parameters gathered on every rank while generating, under DeepSpeed ZeRO-3.

    Generation runs hundreds of forwards; gathering the shards once per rollout instead of per
    layer per token is what makes ZeRO-3 rollouts usable. Other engines: nothing to do (DDP and
    ZeRO-2 hold full parameters; FSDP2 modules unshard in their own forward hooks).
    """
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed  # present whenever accelerate runs DeepSpeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
    else:
        yield


def gather_rows(accelerator, t):
    """Every rank's ``t`` [n_rank, ...] concatenated in rank order, [sum of n_rank, ...]; ranks may
    hold different row counts (filtered or dynamically sampled groups), which a plain gather refuses."""
    import torch

    counts = accelerator.gather(torch.tensor([t.shape[0]], device=t.device)).tolist()  # [W]
    gathered = accelerator.gather(accelerator.pad_across_processes(t, dim=0))  # [W * max, ...]
    most = max(counts)
    return torch.cat([gathered[r * most : r * most + n] for r, n in enumerate(counts)])
