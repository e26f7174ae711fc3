"""What a weight push sends into vLLM, and how tied layers are re-derived (no vLLM needed)."""

import torch

from vlmr1.rl.vllm_weights import expand_to_layers, layer_key, retie, tied_aliases

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
LAYER = "model.language_model.layers.0"
NAMES = [
    f"{LAYER}.self_attn.{p}_proj.{leaf}" for p in ("q", "k", "v") for leaf in ("weight", "bias")
] + [f"{LAYER}.self_attn.o_proj.weight", f"{LAYER}.mlp.gate_proj.weight", f"{LAYER}.mlp.up_proj.weight", f"{LAYER}.mlp.down_proj.weight"]


def test_a_fused_members_layer_is_the_fused_layer():
    assert layer_key(f"{LAYER}.self_attn.k_proj.bias", PACKED) == f"{LAYER}.self_attn.qkv_proj"
    assert layer_key(f"{LAYER}.mlp.up_proj.weight", PACKED) == f"{LAYER}.mlp.gate_up_proj"
    assert layer_key(f"{LAYER}.self_attn.o_proj.weight", PACKED) == f"{LAYER}.self_attn.o_proj"  # not fused
    assert layer_key("lm_head.weight", PACKED) == "lm_head"


def test_changing_q_and_v_sends_the_whole_qkv_layer_and_nothing_else():
    changed = [f"{LAYER}.self_attn.q_proj.weight", f"{LAYER}.self_attn.v_proj.weight"]  # LoRA on q and v
    # q, k, v weights and biases: 6 tensors, in the model's order; o_proj and the MLP stay.
    assert expand_to_layers(changed, NAMES, PACKED) == NAMES[:6]
    assert expand_to_layers([f"{LAYER}.mlp.gate_proj.weight"], NAMES, PACKED) == NAMES[7:9]  # gate and up
    # A model that fuses nothing: the q and v layers, each with its bias.
    assert expand_to_layers(changed, NAMES, {}) == [NAMES[0], NAMES[1], NAMES[4], NAMES[5]]


class RecordingMethod:
    """A vLLM quant_method stand-in: records which modules were post-processed."""

    def __init__(self, log):
        self.log = log

    def process_weights_after_loading(self, module):
        self.log.append(module)


def test_a_tied_head_is_found_and_re_derived_only_when_its_embedding_was_loaded():
    log = []
    model = torch.nn.Module()
    model.embed_tokens = torch.nn.Embedding(10, 4)
    model.head = torch.nn.Linear(4, 10, bias=False)
    model.head.weight = model.embed_tokens.weight  # tied: the same Parameter
    model.head.quant_method = RecordingMethod(log)
    model.other = torch.nn.Linear(4, 4)
    ((source, alias),) = tied_aliases(model)
    assert source == "embed_tokens" and alias is model.head
    retie([(source, alias)], {"other"})  # the embedding did not change: nothing to redo
    assert log == []
    retie([(source, alias)], {"embed_tokens", "other"})
    assert log == [model.head]
    retie([(source, alias)], None)  # None: always
    assert log == [model.head, model.head]
