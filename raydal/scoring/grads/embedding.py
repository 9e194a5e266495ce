"""nn.Embedding: per-sample gradient rows are sums of G over positions holding the same index."""
from __future__ import annotations

from torch import nn

from raydal.scoring.grads.registry import acc, register_rule


def _plain(m: nn.Embedding) -> bool:
    return m.max_norm is None and not m.scale_grad_by_freq


@register_rule(nn.Embedding, params=("weight",), applies=_plain)
def embedding_terms(m: nn.Module, a, g, wanted: dict) -> list:
    b = g.shape[0]
    idx = a.reshape(b, -1)
    g = g.reshape(b, idx.shape[1], -1)
    if m.padding_idx is not None:
        g = g * (idx != m.padding_idx).unsqueeze(-1)
    same = idx.unsqueeze(2) == idx.unsqueeze(1)
    norm = ((g @ g.transpose(1, 2)) * same).sum((1, 2), dtype=acc(g))
    v = wanted["weight"]
    return [(norm, (v[idx] * g).sum((1, 2), dtype=acc(g)) if v is not None else None)]
