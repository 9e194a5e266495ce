"""nn.Conv1d / nn.Conv2d (any padding mode, stride, dilation, groups): a weight (o, i = C/groups x
kernel) used at T output positions, in the Gram or the materialised form, whichever is cheaper."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.registry import Block, acc, dot, gram_norm, projection, register_rule, \
    root_terms, use_gram


def _explicit_padding(m: nn.Module, a: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Conv input and integer padding equivalent to the module's padding (mode, 'same')."""
    if m.padding_mode == "zeros" and not isinstance(m.padding, str):
        return a, m.padding
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    return F.pad(a, m._reversed_padding_repeated_twice, mode=mode), (0,) * (a.ndim - 2)


def _pointwise(m: nn.Module) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped convolution: a linear map at each position."""
    return (all(k == 1 for k in m.kernel_size) and all(s == 1 for s in m.stride)
            and m.groups == 1 and (isinstance(m.padding, str) or not any(m.padding)))


def patches(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Conv input (B, C, *S) -> per-group patches (B, groups, T, i) for the Gram form's norm,
    which does not depend on the order of i. Ungrouped: the windows of the padded input in
    channels-last layout, i ordered (*kernel, C), one strided copy with C-long contiguous runs
    (2-7x faster on CPU than windows of NCHW, whose copy moves kernel-long runs, and than F.unfold).
    Grouped: windows of NCHW, i ordered as the weight's (C/groups, *kernel)."""
    b, n, d = a.shape[0], m.groups, a.ndim - 2
    if _pointwise(m):
        return a.flatten(2).transpose(1, 2).unsqueeze(1)
    a, padding = _explicit_padding(m, a)
    if n == 1 and d == 2 and any(padding):  # pad in channels-last: one copy less
        a = a.contiguous(memory_format=torch.channels_last)
    if any(padding):
        a = F.pad(a, [p for p in reversed(padding) for _ in range(2)])
    if n == 1:
        a = a.movedim(1, -1).contiguous()  # (B, *S, C), a view when the pad kept channels-last
        out = [(a.shape[1 + k] - (m.kernel_size[k] - 1) * m.dilation[k] - 1) // m.stride[k] + 1
               for k in range(d)]
        st = a.stride()
        windows = a.as_strided((b, *out, *m.kernel_size, a.shape[-1]),
                               (st[0], *(m.stride[k] * st[1 + k] for k in range(d)),
                                *(m.dilation[k] * st[1 + k] for k in range(d)), 1))
        return windows.reshape(b, 1, math.prod(out), -1)
    for k in range(d):  # windows of each spatial dim appended at the end: (B, C, *T_dims, *kernel)
        span = (m.kernel_size[k] - 1) * m.dilation[k] + 1
        a = a.unfold(2 + k, span, m.stride[k])[..., ::m.dilation[k]]
    out_dims = a.shape[2:2 + d]
    a = a.reshape(b, n, a.shape[1] // n, *a.shape[2:])  # (B, n, C/n, *T_dims, *kernel)
    order = (0, 1, *range(3, 3 + d), 2, *range(3 + d, 3 + 2 * d))
    return a.permute(order).reshape(b, n, out_dims.numel(), -1)


def _per_sample_weight(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients (B, *weight.shape): a batched matmul for pointwise convs, else
    ONE weight gradient of a convolution with the batch folded into the groups (3-4x faster than
    im2col + batched matmul on CPU)."""
    b = a.shape[0]
    if _pointwise(m):
        return torch.bmm(g.flatten(2), a.flatten(2).transpose(1, 2))  # (B, o, i)
    a, padding = _explicit_padding(m, a)
    fold = lambda t: t.reshape(1, b * t.shape[1], *t.shape[2:])  # noqa: E731
    # what torch.nn.grad.conv{1,2}d_weight call, without their wrappers
    shape = (b * m.out_channels, *m.weight.shape[1:])
    w = torch.ops.aten.convolution_backward(
        fold(g), fold(a), g.new_empty(1).expand(shape), None, m.stride, padding, m.dilation,
        False, [0], m.groups * b, (False, True, False))[1]
    return w.reshape(b, *m.weight.shape)


def gram_weight_terms(m: nn.Module, a, g, v):
    """Weight terms in the Gram form: <u u^T, g g^T> per group, u the patches (B, groups, T, i),
    g the output gradient as (B, groups, T, o); the inner product <g, conv(a, V)>, the layer's
    own convolution with g_L's slice V as its weight (the flops of its forward pass)."""
    b, n = g.shape[0], m.groups
    u = patches(m, a)
    inner = dot(g, m._conv_forward(a, v, None)) if v is not None else None
    if n == 1:  # plain 3-d batched matmuls
        u, g = u.squeeze(1), g.reshape(b, m.out_channels, -1).transpose(1, 2)  # (B, T, i), (B, T, o)
        return gram_norm(g, u), inner
    return gram_norm(g.reshape(b, n, m.out_channels // n, -1).transpose(2, 3), u), inner


def materialised_weight_terms(m: nn.Module, a, g, v):
    """Weight terms from the per-sample weight gradients (B, *weight.shape)."""
    return root_terms(_per_sample_weight(m, a, g), v)


def conv_project(m: nn.Module, a, g, dirs: dict) -> torch.Tensor:
    """Sketch: an ungrouped weight's per-sample gradient on rank-one directions r s^T is
    sum_t (r . g_t)(s . patch_t): the input convolved with the dim kernels S, times G contracted
    with R, summed over positions (no per-sample gradient); a grouped weight's per-sample
    gradients are materialised and projected; the bias's is G summed over positions."""
    out = 0
    if "weight" in dirs:
        if m.groups == 1:
            r, s = dirs["weight"]
            sa = m._conv_forward(a, s, None)  # (B, dim, *T)
            out = (sa * torch.einsum("bo...,ko->bk...", g, r)).flatten(2).sum(2)
        else:
            out = projection(_per_sample_weight(m, a, g), dirs["weight"])
    if "bias" in dirs:
        out = out + projection(g.flatten(2).sum(2), dirs["bias"])
    return out


@register_rule(nn.Conv1d, nn.Conv2d, project=conv_project)
def conv_terms(m: nn.Module, a, g, wanted: dict) -> list:
    out = []
    if "weight" in wanted:
        # shape arithmetic, not g[0, 0].numel(): indexing dispatches two ops per layer
        t, o, i = math.prod(g.shape[2:]), m.out_channels // m.groups, math.prod(m.weight.shape[1:])
        v = wanted["weight"]
        form = gram_weight_terms if use_gram(t, o, i, v is not None) else materialised_weight_terms
        out.append(form(m, a, g, v))
    if "bias" in wanted:
        out.append(Block("bias", g.sum(tuple(range(2, g.ndim)), dtype=acc(g))))
    return out
