"""Eval-mode BatchNorm, GroupNorm and LayerNorm: an elementwise affine y = xhat * weight + bias.
Their per-sample gradients are small (B, C) blocks, handed to the scorer as ``Block``s."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import Block, register_rule


def affine_terms(g_sum: torch.Tensor, g_xhat: torch.Tensor | None, wanted: dict) -> list:
    """Per-sample gradients g_xhat (B, *weight) = sum over positions of G * xhat, and the sum of
    G over positions g_sum (B, *bias)."""
    out = []
    if "weight" in wanted:
        out.append(Block("weight", g_xhat))
    if "bias" in wanted:
        out.append(Block("bias", g_sum))
    return out


def channel_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) x (B, C, *S) -> (B, C) sums over positions (a mul and a sum)."""
    return torch.mul(x, y).sum(tuple(range(2, x.ndim))) if x.ndim > 2 else x * y


def _position_sum(g: torch.Tensor) -> torch.Tensor:
    return g.sum(tuple(range(2, g.ndim))) if g.ndim > 2 else g


def _has_running_stats(m: nn.Module) -> bool:
    if m.running_mean is None:
        raise ValueError(f"{type(m).__name__} has no running statistics: in eval mode it "
                         "normalises with batch statistics, so per-sample gradients are undefined")
    return True


@register_rule(nn.modules.batchnorm._BatchNorm, applies=_has_running_stats)
def batchnorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    # sum_s G (A - mean) rstd = (sum_s G A - mean sum_s G) rstd: no normalised copy of A
    g_sum = _position_sum(g)
    g_xhat = None
    if "weight" in wanted:
        stats = (m.running_mean, m.running_var)
        if stats[0].dtype != g.dtype:
            stats = tuple(t.to(g.dtype) for t in stats)
        g_xhat = torch.addcmul(channel_dot(g, a), stats[0], g_sum, value=-1) \
            * torch.rsqrt(stats[1] + m.eps)
    return affine_terms(g_sum, g_xhat, wanted)


@register_rule(nn.GroupNorm)
def groupnorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    xhat = F.group_norm(a, m.num_groups, eps=m.eps)
    return affine_terms(_position_sum(g), channel_dot(g, xhat), wanted)


@register_rule(nn.LayerNorm)
def layernorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    shape, b = m.normalized_shape, a.shape[0]
    xhat = F.layer_norm(a, shape, eps=m.eps)
    g, xhat = g.reshape(b, -1, *shape), xhat.reshape(b, -1, *shape)  # (B, positions, *shape)
    return affine_terms(g.sum(1), torch.mul(g, xhat).sum(1), wanted)
