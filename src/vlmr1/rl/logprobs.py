"""Per-token log-probabilities of completions under a model.

Only completion positions get logits (``logits_to_keep``), and the log-softmax runs in chunks
of rows, so memory does not scale with vocabulary x full sequence length.
"""

from __future__ import annotations

import torch

from .entropy import token_entropy


def selective_log_softmax(
    logits: torch.Tensor, ids: torch.Tensor, chunk: int = 16, suppress: torch.Tensor | None = None, with_entropy: bool = False
):
    """log softmax(logits)[..., ids] computed ``chunk`` rows at a time, in fp32.

    logits [N, L, V], ids [N, L] -> [N, L]. ``suppress`` (token ids) get probability 0, as the
    sampler gave them (out of place, per chunk, so the graph and memory stay intact).
    ``with_entropy``: also the entropy [N, L] of each position's distribution (no gradient).
    """
    out, entropies = [], []
    for lg, ix in zip(logits.split(chunk), ids.split(chunk)):
        lg = lg.float()
        if suppress is not None and len(suppress):
            lg = lg.index_fill(-1, suppress, float("-inf"))
        picked = lg.gather(-1, ix.unsqueeze(-1)).squeeze(-1)  # [n, L]
        out.append(picked - torch.logsumexp(lg, dim=-1))
        if with_entropy:
            entropies.append(token_entropy(lg))
    return (torch.cat(out), torch.cat(entropies)) if with_entropy else torch.cat(out)


def completion_logprobs(
    model, inputs: dict, completion_ids: torch.Tensor, temperature: float = 1.0, suppress: list[int] | None = None, with_entropy: bool = False
):
    """Log-probs [N, Lc] of ``completion_ids`` (the last Lc tokens of ``inputs['input_ids']``).

    Logits are divided by the sampling temperature, and the tokens the sampler suppresses
    (``suppress``) are removed, so that ratios and KL refer to the distribution the completions
    were actually drawn from. ``with_entropy``: also their entropies [N, Lc] (``selective_log_softmax``).
    """
    length = completion_ids.shape[1]
    # Logits at position t predict token t+1: keep the Lc+1 last positions, drop the final one.
    logits = model(**inputs, logits_to_keep=length + 1, use_cache=False).logits[:, :-1, :]  # [N, Lc, V]
    if temperature != 1.0:
        logits = logits / temperature
    ids = torch.tensor(suppress, device=logits.device) if suppress else None
    return selective_log_softmax(logits, completion_ids, suppress=ids, with_entropy=with_entropy)
