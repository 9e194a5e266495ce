"""Seeded random projections ("sketches") of per-sample gradients, computed layer by layer.

For a weight used at positions t (one for a linear layer, every output pixel of a convolution),
the per-sample gradient of sample u is W_u = sum_t g_t a_t^T, with g_t the output gradient and
a_t the input (or im2col patch). Its projection on a rank-one direction r s^T is
    <r s^T, W_u> = sum_t (r . g_t) (s . a_t):
a matmul of the output gradients with R (k, out) and a convolution of the input with S (k
kernels shaped like the weight's), so no per-sample gradient is ever built. With independent
standard Gaussian directions, E[<r s^T, W_u> <r s^T, W_v>] = <W_u, W_v>; k directions scaled by
1/sqrt(k), and independent directions for every layer summed into ONE k-vector, give
    E[<sketch_u, sketch_v>] = <g_u, g_v>    over every sketched parameter.
The directions are a pure function of (seed, parameter name, shape): every actor that sketches
with the same seed uses the same projection.

Sketched: the weights and biases of nn.Linear and ungrouped nn.Conv1d / nn.Conv2d. Other
parameters (normalisation layers, grouped convolutions, ...) are left out of the sketch; for
timm's test_resnet that is BatchNorm's 1.6% of the parameters.
"""
from __future__ import annotations

import functools
import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_FORWARDS = (nn.Linear.forward, nn.Conv1d.forward, nn.Conv2d.forward)


def sketched_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the trainable layers the sketch covers, in model order."""
    return {name: m for name, m in model.named_modules()
            if type(m).forward in _FORWARDS and getattr(m, "groups", 1) == 1
            and m.weight.requires_grad}


def directions(name: str, module: nn.Module, dim: int, seed: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(R (dim, out), S (dim, *weight.shape[1:]), R_bias (dim, out) or None), float64 standard
    Gaussians drawn from a generator keyed by (seed, name, weight shape)."""
    return _directions(name, tuple(module.weight.shape),
                       module.bias is not None and module.bias.requires_grad, dim, seed)


@functools.lru_cache(maxsize=512)
def _directions(name: str, shape: tuple[int, ...], bias: bool, dim: int, seed: int):
    """The draws of ``directions``, made once per process (they are redrawn identically)."""
    key = f"{seed}\x00{name}\x00{shape}".encode()
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8)
                                                       .digest(), "big") >> 1)
    r = torch.randn(dim, shape[0], generator=gen, dtype=torch.float64)
    s = torch.randn(dim, *shape[1:], generator=gen, dtype=torch.float64)
    rb = torch.randn(dim, shape[0], generator=gen, dtype=torch.float64) if bias else None
    return r, s, rb


def _layer_sketch(m: nn.Module, a: torch.Tensor, g: torch.Tensor, r, s, rb) -> torch.Tensor:
    """(B, dim) projection of the module's per-sample gradients from its input a and output
    gradient g (both in the compute dtype)."""
    b = a.shape[0]
    if isinstance(m, nn.Linear):
        a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, in/out)
        out = ((g @ r.T) * (a @ s.T)).sum(1)
        g_sum = g.sum(1)
    else:  # conv: S as `dim` output kernels over the input, R over the output channels
        sa = m._conv_forward(a, s, None)  # (B, dim, *S)
        gr = torch.einsum("bo...,ko->bk...", g, r)
        out = (sa * gr).flatten(2).sum(2)
        g_sum = g.flatten(2).sum(2)
    if rb is not None:
        out = out + g_sum @ rb.T
    return out


def gradient_sketch(model: nn.Module, x: torch.Tensor, dim: int = 128, seed: int = 0
                    ) -> torch.Tensor:
    """Sketches of the pseudo-label gradients g_u = grad CE(f(x_u), argmax f(x_u)) of x (B, ...),
    model in eval mode: (B, dim) float64 on x's device. One forward and one backward pass."""
    modules = sketched_modules(model)
    if not modules:
        raise ValueError("gradient_sketch found no trainable nn.Linear / ungrouped conv layer")
    cdtype = torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32
    dirs = {n: tuple(t.to(x.device, cdtype) if t is not None else None
                     for t in directions(n, m, dim, seed)) for n, m in modules.items()}
    acc = torch.zeros(x.shape[0], dim, dtype=torch.float64, device=x.device)

    def hook(name):
        def forward_hook(mod, args, out):
            a = args[0].detach()
            version = a._version

            def backward_hook(g):
                if a._version != version:
                    raise RuntimeError(f"the input of {name} was modified in place after the "
                                       "layer ran; its gradient sketch would be wrong")
                acc.add_(_layer_sketch(mod, a.to(cdtype), g.to(cdtype), *dirs[name]))
            out.register_hook(backward_hook)
        return forward_hook

    was_training = [m for m in model.modules() if m.training]
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        for m in was_training:
            m.training = False
        with torch.enable_grad():
            logits = model(x)
            loss = F.cross_entropy(logits.to(cdtype), logits.argmax(1), reduction="sum")
            torch.autograd.grad(loss, [m.weight for m in modules.values()])
    finally:
        for h in handles:
            h.remove()
        for m in was_training:
            m.training = True
    return acc / math.sqrt(dim)
