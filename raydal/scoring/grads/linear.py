"""nn.Linear over any leading dims: weight (o, i) used at T = positions per sample."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import Block, RootTerms, acc, dot, gram_norm, projection, \
    register_rule, root_terms, use_gram


def linear_project(m: nn.Module, a, g, dirs: dict) -> torch.Tensor:
    """Sketch: the weight's per-sample gradient sum_t g_t a_t^T on rank-one directions r s^T is
    sum_t (r . g_t)(s . a_t), two matmuls and no per-sample gradient; the bias's is G summed."""
    b = g.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, in), (B, T, out)
    out = 0
    if "weight" in dirs:
        r, s = dirs["weight"]
        out = ((g @ r.T) * (a @ s.T)).sum(1)
    if "bias" in dirs:
        out = out + projection(g.sum(1), dirs["bias"])
    return out


@register_rule(nn.Linear, project=linear_project)
def linear_terms(m: nn.Module, a, g, wanted: dict) -> list:
    out = []
    if a.ndim == 2:  # one position (a classifier): the per-sample gradient is the outer product g a^T
        if "weight" in wanted:
            v = wanted["weight"]
            out.append(RootTerms(torch.linalg.vector_norm(a, dim=1, dtype=acc(a))
                                 * torch.linalg.vector_norm(g, dim=1, dtype=acc(g)),
                                 dot(g, F.linear(a, v)) if v is not None else None))
        if "bias" in wanted:
            out.append(Block("bias", g if acc(g) is None else g.float()))
        return out
    b = g.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, in), (B, T, out)
    if "weight" in wanted:
        v = wanted["weight"]
        if use_gram(g.shape[1], g.shape[2], a.shape[2], v is not None):
            out.append((gram_norm(g, a), dot(g, F.linear(a, v)) if v is not None else None))
        else:
            out.append(root_terms(torch.bmm(g.transpose(1, 2), a), v))
    if "bias" in wanted:
        out.append(Block("bias", g.sum(1, dtype=acc(g))))
    return out
