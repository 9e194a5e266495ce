"""Eval-mode BatchNorm, GroupNorm and LayerNorm: an elementwise affine y = xhat * weight + bias."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import flat_terms, register_rule


def affine_terms(g_sum: torch.Tensor, g_xhat: torch.Tensor | None, wanted: dict) -> list:
    """Per-sample gradients g_xhat (B, *weight) = sum over positions of G * xhat, and the sum of
    G over positions g_sum (B, *bias)."""
    out = []
    if "weight" in wanted:
        out.append(flat_terms(g_xhat, wanted["weight"]))
    if "bias" in wanted:
        out.append(flat_terms(g_sum, wanted["bias"]))
    return out


def channel_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) x (B, C, *S) -> (B, C) sums over positions, in one pass."""
    return torch.einsum("bcs,bcs->bc", x.flatten(2), y.flatten(2))


def _has_running_stats(m: nn.Module) -> bool:
    if m.running_mean is None:
        raise ValueError(f"{type(m).__name__} has no running statistics: in eval mode it "
                         "normalises with batch statistics, so per-sample gradients are undefined")
    return True


@register_rule(nn.modules.batchnorm._BatchNorm, applies=_has_running_stats)
def batchnorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    # sum_s G (A - mean) rstd = (sum_s G A - mean sum_s G) rstd: no normalised copy of A
    a, g = a.reshape(*a.shape[:2], -1), g.reshape(*g.shape[:2], -1)
    g_sum = g.sum(2)
    g_xhat = ((channel_dot(g, a) - m.running_mean * g_sum) * torch.rsqrt(m.running_var + m.eps)
              if "weight" in wanted else None)
    return affine_terms(g_sum, g_xhat, wanted)


@register_rule(nn.GroupNorm)
def groupnorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    xhat = F.group_norm(a, m.num_groups, eps=m.eps)
    return affine_terms(g.flatten(2).sum(2), channel_dot(g, xhat), wanted)


@register_rule(nn.LayerNorm)
def layernorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    shape, b = m.normalized_shape, a.shape[0]
    xhat = F.layer_norm(a, shape, eps=m.eps)
    g, xhat = g.reshape(b, -1, *shape), xhat.reshape(b, -1, *shape)  # (B, positions, *shape)
    return affine_terms(g.sum(1), torch.einsum("bs...,bs...->b...", g, xhat), wanted)
