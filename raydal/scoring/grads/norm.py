"""Eval-mode BatchNorm, GroupNorm and LayerNorm: an elementwise affine y = xhat * weight + bias.
Their per-sample gradients are small (B, C) blocks, handed to the scorer as ``Block``s."""
from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import Block, acc, register_rule


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
    """(B, C, *S) x (B, C, *S) -> (B, C) sums over positions (a mul and a sum; float32 sums of
    half-precision inputs)."""
    if x.ndim > 2:
        return torch.mul(x, y).sum(tuple(range(2, x.ndim)), dtype=acc(x))
    return x * y if acc(x) is None else torch.mul(x, y).float()


def _position_sum(g: torch.Tensor) -> torch.Tensor:
    if g.ndim > 2:
        return g.sum(tuple(range(2, g.ndim)), dtype=acc(g))
    return g if acc(g) is None else g.float()


def _has_running_stats(m: nn.Module) -> bool:
    if m.running_mean is None:
        raise ValueError(f"{type(m).__name__} has no running statistics: in eval mode it "
                         "normalises with batch statistics, so per-sample gradients are undefined")
    return True


_STATS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _mean_rstd(m: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(running_mean, 1 / sqrt(running_var + eps)) in dtype, kept while the statistics are
    unchanged (their version counters): the eps addition and the rsqrt are otherwise two
    dispatches per layer and call. Inside a CUDA graph capture they are recomputed, so that the
    graph follows statistics changed in place later."""
    mean, var = m.running_mean, m.running_var
    if var.is_cuda and torch.cuda.is_current_stream_capturing():
        return mean.to(dtype), torch.rsqrt(var.to(dtype) + m.eps)
    key = (mean._version, var._version, mean.data_ptr(), var.data_ptr(), m.eps, dtype)
    cached = _STATS.get(m)
    if cached is None or cached[0] != key:
        cached = _STATS[m] = (key, mean.to(dtype), torch.rsqrt(var.to(dtype) + m.eps))
    return cached[1], cached[2]


@register_rule(nn.modules.batchnorm._BatchNorm, applies=_has_running_stats)
def batchnorm_terms(m: nn.Module, a, g, wanted: dict) -> list:
    # sum_s G (A - mean) rstd = (sum_s G A - mean sum_s G) rstd: no normalised copy of A
    g_sum = _position_sum(g)
    g_xhat = None
    if "weight" in wanted:
        mean, rstd = _mean_rstd(m, g_sum.dtype)  # float32 for bf16 contractions
        g_xhat = torch.addcmul(channel_dot(g, a), mean, g_sum, value=-1).mul_(rstd)
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
    return affine_terms(g.sum(1, dtype=acc(g)), torch.mul(g, xhat).sum(1, dtype=acc(g)), wanted)
