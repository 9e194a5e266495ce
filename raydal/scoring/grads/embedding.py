"""nn.Embedding: per-sample gradient rows are sums of G over positions holding the same index."""
from __future__ import annotations

import torch
from torch import nn

from raydal.scoring.grads.registry import acc, register_rule


def _plain(m: nn.Embedding) -> bool:
    return m.max_norm is None and not m.scale_grad_by_freq


def _rows(m: nn.Embedding, a, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (B, T) and output gradients (B, T, D), zero at the padding index."""
    b = g.shape[0]
    idx = a.reshape(b, -1)
    g = g.reshape(b, idx.shape[1], -1)
    if m.padding_idx is not None:
        g = g * (idx != m.padding_idx).unsqueeze(-1)
    return idx, g


def embedding_project(m: nn.Module, a, g, dirs: dict) -> torch.Tensor:
    """Sketch: the per-sample gradient on rank-one directions r s^T is sum_t r[idx_t] (s . g_t)."""
    idx, g = _rows(m, a, g)
    r, s = dirs["weight"]
    return ((g @ s.T) * r.T[idx]).sum(1)


@register_rule(nn.Embedding, params=("weight",), applies=_plain, project=embedding_project)
def embedding_terms(m: nn.Module, a, g, wanted: dict) -> list:
    idx, g = _rows(m, a, g)
    same = idx.unsqueeze(2) == idx.unsqueeze(1)
    norm = ((g @ g.transpose(1, 2)) * same).sum((1, 2), dtype=acc(g))
    v = wanted["weight"]
    return [(norm, (v[idx] * g).sum((1, 2), dtype=acc(g)) if v is not None else None)]
