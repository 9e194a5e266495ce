"""Per-sample gradients of the parameters no rule covers (and the reference ``method="vmap"``):
chunked ``torch.func.vmap``, or, where vmap cannot run the model (e.g. a custom
``autograd.Function`` without a vmap rule), a plain per-sample autograd loop: exact and slow."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from raydal.scoring.grads.common import autocast, warn_once
from raydal.scoring.grads.registry import flat_terms


def per_sample_terms(model, x, yhat, names, g_L, chunk_size, autocast_dtype, cdtype):
    """(B,) float64 squared norms of the per-sample gradients of the named parameters and their
    inner products with g_L (zeros when g_L is None), chunk_size samples at a time (memory
    chunk_size x P)."""
    norm = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    inner = torch.zeros_like(norm)
    for sl, grads in per_sample_grads(model, x, yhat, names, chunk_size, autocast_dtype, cdtype):
        for n, g in grads.items():
            n2, i2 = flat_terms(g, g_L[n] if g_L is not None else None)
            norm[sl] += n2
            if i2 is not None:
                inner[sl] += i2
    return norm, inner


def per_sample_grads(model, x, yhat, names, chunk_size, autocast_dtype, cdtype):
    """Yields (slice of x, {name: (n, *shape) per-sample gradients in cdtype}) of the pseudo-label
    losses CE(f(x_u), yhat_u) for the named parameters, chunk_size samples at a time."""
    params = dict(model.named_parameters())
    sub = {n: params[n].detach() for n in names}

    def loss_one(p, xi, yi):
        with autocast(x, autocast_dtype):
            out = torch.func.functional_call(model, p, (xi.unsqueeze(0),), strict=False)
        return F.cross_entropy(out.to(cdtype), yi.unsqueeze(0))

    vmapped = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
    use_loop = False
    for start in range(0, len(x), chunk_size):
        sl = slice(start, start + chunk_size)
        if not use_loop:
            try:
                with torch.no_grad():
                    grads = vmapped(sub, x[sl], yhat[sl])
            except (RuntimeError, NotImplementedError) as err:
                use_loop = True
                warn_once(f"loop:{type(model).__qualname__}", "dynamicAL: torch.func.vmap "
                          "cannot run %s (%s); using a per-sample autograd loop for %d "
                          "parameter(s) instead: exact, but one batch-of-1 training "
                          "step per sample", type(model).__name__,
                          str(err).splitlines()[0][:200], len(names))
        if use_loop:
            grads = _loop_grads(loss_one, sub, x[sl], yhat[sl])
        yield sl, {n: g.to(cdtype) for n, g in grads.items()}


def _loop_grads(loss_one, sub, xs, ys) -> dict:
    """{name: (n, *shape)} per-sample gradients of the parameters in sub, one autograd call per
    sample of xs (n, ...), ys (n,)."""
    leaves = {n: p.detach().requires_grad_() for n, p in sub.items()}
    rows = []
    with torch.enable_grad():
        for xi, yi in zip(xs, ys):
            grads = torch.autograd.grad(loss_one(leaves, xi, yi), list(leaves.values()),
                                        allow_unused=True)
            rows.append([torch.zeros_like(p) if g is None else g
                         for g, p in zip(grads, leaves.values())])
    return {n: torch.stack([row[k] for row in rows]) for k, n in enumerate(leaves)}
