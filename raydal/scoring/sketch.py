"""Seeded random projections ("sketches") of per-sample gradients, through the gradient rules.

The sketch of sample u is sketch_u = (<d_1, g_u>, ..., <d_dim, g_u>) / sqrt(dim), g_u the
pseudo-label gradient over the selected parameters and d_j random directions with
E[d_j d_j^T] = I, so that
    E[<sketch_u, sketch_v>] = <g_u, g_v>    over every selected parameter.
Each parameter has its own independent directions, a pure function of (seed, parameter name,
shape) (every actor that sketches with the same seed uses the same projection): standard
Gaussian vectors for a vector parameter, rank-one r_j (x) s_j with r_j, s_j standard Gaussian for
a matrix or kernel viewed as (shape[0], rest) (E[<r s^T, W_u> <r s^T, W_v>] = <W_u, W_v>; only
the factors are stored).

The sketch runs the scorer's engine (``grads.onepass.one_pass``): one forward and one backward
pass in which every covered layer's rule projects its per-sample gradient from its input A and
output gradient G. A rule's own ``project`` does it without a per-sample gradient (Linear, Conv,
Embedding: <r s^T, sum_t g_t a_t^T> = sum_t (r . g_t)(s . a_t), a matmul of the output gradients
with R and of the inputs, or a convolution, with S); other rules are projected through the rule
itself (``project_by_rule``: norm layers' per-sample blocks directly, a user rule's terms by
inner products with the dense directions). Loose parameters (ViT's pos_embed) are projected from
their per-sample copies and parameters no rule covers from the fallback's per-sample gradients:
the sketch covers exactly the parameters dynamicAL scores, with the same rules.
"""
from __future__ import annotations

import functools
import hashlib
import math

import torch
from torch import nn

from raydal.scoring.grads import fallback
from raydal.scoring.grads.common import eval_mode, select_params, warn_once
from raydal.scoring.grads.onepass import model_cache, one_pass
from raydal.scoring.grads.registry import Block, Directions, Rule, RuleSpec, projection

#: elements of dense directions ``project_by_rule`` builds at once (chunks of directions)
DENSE_ELEMENTS = 1 << 24


def directions(name: str, shape: tuple[int, ...], dim: int, seed: int) -> Directions:
    """A parameter's dim directions, float64 standard Gaussians drawn from a generator keyed by
    (seed, name, shape): (D (dim, *shape),) for a vector or scalar, the rank-one factors
    (R (dim, shape[0]), S (dim, *shape[1:])) otherwise. Drawn once per process (shared tensors:
    do not modify them)."""
    return _directions(name, tuple(shape), dim, seed)


@functools.lru_cache(maxsize=1024)
def _directions(name: str, shape: tuple[int, ...], dim: int, seed: int) -> Directions:
    key = f"{seed}\x00{name}\x00{shape}".encode()
    gen = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8)
                                                       .digest(), "big") >> 1)
    draw = lambda *s: torch.randn(dim, *s, generator=gen, dtype=torch.float64)  # noqa: E731
    return (draw(*shape),) if len(shape) <= 1 else (draw(shape[0]), draw(*shape[1:]))


def dense_directions(dirs: Directions, shape: tuple[int, ...]) -> torch.Tensor:
    """The directions (dim, *shape) themselves: r_j (x) s_j built for rank-one factors."""
    if len(dirs) == 1:
        return dirs[0].reshape(-1, *shape)
    r, s = dirs
    return (r[:, :, None] * s.reshape(len(s), 1, -1)).reshape(len(r), *shape)


def project_by_rule(rule: Rule, m: nn.Module, a: torch.Tensor, g: torch.Tensor,
                    dirs: dict) -> torch.Tensor:
    """The projection (B, dim) of a layer whose rule has none of its own, through the rule: the
    per-sample gradients it hands over as ``Block``s are projected as they are; the other
    parameters' projections are the rule's inner products with the dense directions, batched
    over DENSE_ELEMENTS-sized chunks of directions by torch.func.vmap (one rule call per
    direction where vmap cannot run the rule). Exact, at the cost of dim inner products."""
    out, others = 0, dict(dirs)
    for item in rule(m, a, g, dict.fromkeys(dirs)):
        if isinstance(item, Block):
            out = out + projection(item.per_sample, dirs[item.param])
            others.pop(item.param, None)
    if not others:
        return out

    def inner(wanted: dict) -> torch.Tensor:  # (B,) sum of the inner products with `wanted`
        return functools.reduce(torch.add, [t[1] for t in rule(m, a, g, wanted)
                                            if not isinstance(t, Block)])

    shapes = {p: tuple(m.get_parameter(p).shape) for p in others}
    dim = len(next(iter(others.values()))[0])
    step = max(1, DENSE_ELEMENTS // sum(math.prod(s) for s in shapes.values()))
    parts, batched = [], torch.func.vmap(inner)
    for j in range(0, dim, step):
        dense = {p: dense_directions(tuple(t[j:j + step] for t in d), shapes[p])
                 for p, d in others.items()}
        if batched is not None:
            try:
                parts.append(batched(dense))
                continue
            except (RuntimeError, NotImplementedError) as err:
                batched = None
                warn_once(f"sketch-loop:{type(m).__qualname__}", "gradient sketch: torch.func.vmap "
                          "cannot run the rule of %s (%s); projecting through it one direction "
                          "at a time", type(m).__name__, str(err).splitlines()[0][:200])
        parts.append(torch.stack([inner({p: v[i] for p, v in dense.items()})
                                  for i in range(len(next(iter(dense.values()))))]))
    return out + torch.cat(parts).T


class _Sketch:
    """The sketch's job in ``one_pass``: each covered layer's projection (its rule's ``project``,
    else ``project_by_rule``) and each loose parameter's, summed into (B, dim) float64."""

    def __init__(self, b: int, dim: int, dirs, device):
        self.dirs = dirs
        self.total = torch.zeros(b, dim, dtype=torch.float64, device=device)

    def rule(self, spec: RuleSpec):
        return spec.project or functools.partial(project_by_rule, spec.rule)

    def wanted(self, names: dict) -> dict:
        return {s: self.dirs(full) for s, full in names.items()}

    def add(self, projected: torch.Tensor, names) -> None:
        self.total += projected

    def loose(self, name: str, per_sample: torch.Tensor) -> None:
        self.total += projection(per_sample, self.dirs(name))


def gradient_sketch(model: nn.Module, x: torch.Tensor, dim: int = 128, seed: int = 0,
                    params: str = "all", chunk_size: int = 32) -> torch.Tensor:
    """Sketches of the pseudo-label gradients g_u = grad CE(f(x_u), argmax f(x_u)) of x (B, ...)
    over the selected parameters ("all" trainable ones or the classifier, "head", as
    ``dynamical_scores``), model in eval mode: (B, dim) float64 on x's device. One forward and
    one backward pass (and the fallback's chunked vmap, chunk_size samples at a time, for
    parameters no rule covers), computed in float64 for a float64 model, else float32."""
    selected = select_params(model, params)
    if not selected:
        raise ValueError("gradient_sketch found no trainable parameter")
    cdtype = torch.float64 if any(p.dtype == torch.float64 for p in selected.values()) \
        else torch.float32

    def dirs(name: str) -> Directions:
        return tuple(t.to(x.device, cdtype)
                     for t in directions(name, selected[name].shape, dim, seed))

    cache = model_cache(model, selected)
    new_job = lambda: _Sketch(x.shape[0], dim, dirs, x.device)  # noqa: E731
    with eval_mode(model):
        result = one_pass(model, x, selected, new_job, None, cdtype, params == "head", cache,
                          cdtype)
        if result is None:  # something after the classifier: build the graph everywhere
            result = one_pass(model, x, selected, new_job, None, cdtype, False, cache, cdtype)
        job, yhat, rest = result
        if rest:
            for sl, grads in fallback.per_sample_grads(model, x, yhat, rest, chunk_size, None,
                                                       cdtype):
                for n, g in grads.items():
                    job.total[sl] += projection(g, dirs(n))
    return job.total / math.sqrt(dim)
