"""nn.Linear over any leading dims: weight (o, i) used at T = positions per sample."""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import dot, flat_terms, gram_norm, register_rule, use_gram


@register_rule(nn.Linear)
def linear_terms(m: nn.Module, a, g, wanted: dict) -> list:
    b = g.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, in), (B, T, out)
    out = []
    if "weight" in wanted:
        v = wanted["weight"]
        if use_gram(g.shape[1], g.shape[2], a.shape[2], v is not None):
            out.append((gram_norm(g, a), dot(g, F.linear(a, v)) if v is not None else None))
        else:
            out.append(flat_terms(g.transpose(1, 2) @ a, v))
    if "bias" in wanted:
        out.append(flat_terms(g.sum(1), wanted["bias"]))
    return out
