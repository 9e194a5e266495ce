"""Exact dynamicAL scores without a per-sample gradient matrix.

s(u) = ||g_u||^2 + ip_weight * <g_L, g_u>, g_u the gradient of CE(f(x_u), argmax f(x_u)) over the
selected parameters, model in eval mode. In eval mode samples are independent, so one backward pass
of the SUMMED loss gives every layer its per-sample output gradients G (B, ...). With the layer's
input A, each parameter's per-sample gradient is a known function of (A, G), and its squared norm and
inner product with g_L reduce to small per-sample contractions ("ghost norms", Goodfellow 2015; Bu
et al. mixed ghost norm for convolutions). The B x P matrix is never built: peak memory is that of
one training step.

Layout: ``registry`` (``register_rule``, the seam for a layer type's rule), one module per layer
family (``linear``, ``conv``, ``norm``, ``embedding``, ``timm_layers``), ``onepass`` (the hooks,
and the per-model cache of the plan and of g_L on the device), ``graphed`` (the whole call as a
CUDA graph) and ``fallback`` (chunked vmap for parameters no rule covers, or a per-sample
autograd loop where vmap cannot run the model). The same rules, pass and fallback compute
dynamicAL_batch's gradient sketches (``raydal.scoring.sketch``, through a rule's ``project``).

A call's fixed cost is its operator dispatches (on a GPU, launch and host time: ~55 ms a call on
resnet50 before this layout): built-in rules hand small per-sample blocks (biases, norm affine
parameters) over as ``registry.Block``s, reduced together with one norm and one product against
g_L concatenated once per selection; the other terms are stacked and summed once; a call does
not synchronise with the host, so ``cuda_graph=True`` can replay it whole.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads import conv, embedding, linear, norm  # noqa: F401  (register rules)
from raydal.scoring.grads import fallback, registry
from raydal.scoring.grads.common import autocast, device_of, eval_mode, select_params, warn_once
from raydal.scoring.grads.graphed import graphed_scores
from raydal.scoring.grads.onepass import ghost_terms, model_cache
from raydal.scoring.grads.registry import Rule, Terms, flat_terms, projection, register_rule

registry.register_rule_provider("timm", "raydal.scoring.grads.timm_layers")  # timm's layers

__all__ = ["dynamical_scores", "labeled_gradient", "register_rule", "flat_terms", "projection",
           "Rule", "Terms", "check_cuda_graph"]
_select_params = select_params  # the benchmark's name


def labeled_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                     params: str = "all") -> dict[str, torch.Tensor]:
    """g_L = gradient of the SUMMED cross-entropy over (x (N, ...), y (N,) int64), model in eval
    mode, as {parameter name: tensor shaped like the parameter}; batches moved to the model's
    device. params: "all" trainable parameters or "head" (the classifier)."""
    selected = select_params(model, params)
    total = {n: torch.zeros_like(p) for n, p in selected.items()}
    device = device_of(model)
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            grads = torch.autograd.grad(loss, list(selected.values()), allow_unused=True)
            for name, g in zip(selected, grads):
                if g is not None:
                    total[name] += g
    return total


class _NotCapturable(RuntimeError):
    """Some parameters need the vmap fallback, which a CUDA graph cannot hold."""


def _fast_scores(model, x, selected, g_L, ip_weight, autocast_dtype, cdtype, params, chunk_size,
                 ctype=None, allow_fallback=True) -> torch.Tensor:
    """The exact one-pass scores (B,) float64 (fallback for parameters without a rule)."""
    result = ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype,
                         local_grad=params == "head", ctype=ctype)
    if result is None:  # something after the classifier: build the graph everywhere
        result = ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype, local_grad=False,
                             ctype=ctype)
    norm, inner, yhat, rest = result
    if rest:
        if not allow_fallback:
            raise _NotCapturable(f"{len(rest)} parameter(s) need the vmap fallback, e.g. {rest[:3]}")
        n2, i2 = fallback.per_sample_terms(model, x, yhat, rest, g_L, chunk_size,
                                           autocast_dtype, cdtype)
        norm, inner = norm + n2, inner + i2
    return norm + ip_weight * inner if g_L is not None else norm


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """torch.backends.cuda.matmul.allow_tf32 = True inside (when enabled), restored after. The
    flag is read when a cuBLAS kernel is chosen, so a CUDA graph captured inside replays TF32
    kernels whatever the flag is at replay (the graph key includes the option)."""
    if not enabled:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def dynamical_scores(model: nn.Module, x: torch.Tensor, labeled_x: torch.Tensor | None = None,
                     labeled_y: torch.Tensor | None = None, ip_weight: float = 2.0, *,
                     g_L: dict[str, torch.Tensor] | None = None, params: str = "all",
                     method: str = "fast", chunk_size: int = 32,
                     autocast_dtype: torch.dtype | None = None,
                     cuda_graph: bool = False, contraction_dtype: torch.dtype | None = None,
                     allow_tf32: bool = False) -> torch.Tensor:
    """dynamicAL scores ||g_u||^2 + ip_weight * <g_L, g_u> of x (B, ...) on the model's device:
    (B,) float64 on x's device.

    g_L: precomputed ``labeled_gradient`` (extra names ignored), else computed from labeled_x (N,
    ...), labeled_y (N,); neither is needed when ip_weight == 0. params: "all" or "head" (the
    classifier only, i.e. the closed form ||softmax(z) - e_yhat||^2 (||h||^2 + 1) for a linear
    head: one forward pass with a graph around the head alone). method:
    "fast" (exact, per-layer contractions) or "vmap" (chunked torch.func reference, chunk_size
    samples at a time). autocast_dtype: e.g. torch.bfloat16 for the forward/backward passes;
    contraction_dtype: the dtype of the per-layer contractions (materialised per-sample weight
    gradients, Gram products, inner products with g_L). None: bfloat16 when autocast_dtype is
    bfloat16 and the model float32 (autocast's bf16 A and G used as they come, no upcast copy;
    matmuls accumulate in float32 inside, norms and sums are taken in float32, small blocks such
    as biases and norm affine parameters stay float32, g_L's slices are kept in bf16 once per
    selection), else the model's float32/float64. torch.float32 with bf16 autocast: the
    contractions in float32 (bf16 A and G upcast, as before 2026-12-04). allow_tf32: on CUDA, let
    cuBLAS run float32 matmuls/bmm (the contractions) in TF32 for this call
    (torch.backends.cuda.matmul.allow_tf32 set inside, restored after), as cuDNN already runs
    the forward/backward convolutions of a training step and of this scorer at torch's
    defaults; no effect on a CPU or on float64. cuda_graph: capture the whole "fast"
    call (forward with hooks, backward, rules) as a CUDA graph once per model, input shape,
    dtype and options, and replay it (``graphed``; a smaller batch is padded to the captured
    size, exactly); CUDA only (ValueError elsewhere); a model that needs the vmap fallback for
    some parameters is scored without a graph, with a warning.
    """
    if method not in ("fast", "vmap"):
        raise ValueError(f"method must be 'fast' or 'vmap', got {method!r}")
    if cuda_graph and (method != "fast" or x.device.type != "cuda"):
        raise ValueError("cuda_graph=True needs method='fast' and a CUDA batch (CUDA graphs "
                         f"replay GPU kernels), got method={method!r} and x on {x.device}; "
                         "leave cuda_graph=False there")
    selected = select_params(model, params)
    need_inner = ip_weight != 0
    with eval_mode(model):
        if need_inner:
            if g_L is None:
                if labeled_x is None or labeled_y is None:
                    raise ValueError("dynamical_scores needs g_L or both labeled_x and labeled_y")
                g_L = labeled_gradient(model, labeled_x, labeled_y, params=params)
            missing = sorted(set(selected) - set(g_L))
            if missing:
                raise ValueError(f"g_L lacks {len(missing)} selected parameters, e.g. {missing[:3]}; "
                                 f"compute it with labeled_gradient(model, ..., params={params!r})")
            g_L = model_cache(model, selected).device_g_L(g_L, selected)  # cached per selection
        else:
            g_L = None
        cdtype = torch.float64 if any(p.dtype == torch.float64 for p in selected.values()) \
            else torch.float32
        if contraction_dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
            raise ValueError("contraction_dtype must be None, torch.float32, torch.bfloat16 or "
                             f"torch.float16, got {contraction_dtype!r}")
        if cdtype == torch.float64:  # the float64 reference stays float64 throughout
            ctype = cdtype
        else:
            ctype = contraction_dtype or (torch.bfloat16 if autocast_dtype == torch.bfloat16
                                          else cdtype)
        if method == "vmap":
            with torch.no_grad(), autocast(x, autocast_dtype):
                yhat = model(x).argmax(1)
            norm, inner = fallback.per_sample_terms(model, x, yhat, list(selected), g_L,
                                                    chunk_size, autocast_dtype, cdtype)
            return norm + ip_weight * inner
        args = (model, x, selected, g_L, ip_weight, autocast_dtype, cdtype, params, chunk_size,
                ctype)
        with tf32_matmuls(allow_tf32 and x.device.type == "cuda" and cdtype == torch.float32):
            if cuda_graph:
                key = (tuple(selected), params, float(ip_weight), autocast_dtype, g_L is not None,
                       registry.version, ctype, bool(allow_tf32))
                try:
                    return graphed_scores(model, x, lambda xb: _fast_scores(
                        model, xb, *args[2:], allow_fallback=False), key)
                except _NotCapturable as err:
                    warn_once(f"graph:{type(model).__qualname__}", "dynamicAL: cuda_graph=True "
                              "cannot capture %s (%s); scoring it without a graph",
                              type(model).__name__, err)
            return _fast_scores(*args)


def check_cuda_graph(model, x: torch.Tensor, g_L: dict | None = None, ip_weight: float = 2.0,
                     params: str = "all", autocast_dtype: torch.dtype | None = None,
                     rtol: float = 1e-5, contraction_dtype: torch.dtype | None = None,
                     allow_tf32: bool = False) -> dict:
    """Graphed scores against the eager scorer on a CUDA batch x (B, ...), B >= 2: the full batch
    (capture and a replay), a replay on new data, and a padded partial batch (B - 1 samples)
    against the eager scores of the full batch's first B - 1 (same shapes, so the same kernels).
    Returns {"max_rel_err": worst max |graphed - eager| / max |eager| over the three, per-case
    errors, "ok": max_rel_err <= rtol, and "eager_partial_vs_full": eager B - 1 samples against
    eager full batch, for scale}. On an H200 (torch 2.11) all three were 0.0 in fp32 and bf16;
    eager at another batch size differs by ~1.4e-4 (cuDNN's TF32 convolutions and algorithm
    choice depend on the batch size). contraction_dtype, allow_tf32: as ``dynamical_scores``'s
    (the TF32 flag is set around capture and eager calls alike)."""
    if not x.is_cuda:
        raise ValueError(f"check_cuda_graph needs a CUDA batch, got x on {x.device}")
    kw = dict(g_L=g_L, ip_weight=ip_weight, params=params, autocast_dtype=autocast_dtype,
              contraction_dtype=contraction_dtype, allow_tf32=allow_tf32)
    gen = torch.Generator(device=x.device).manual_seed(0)
    other = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))  # noqa: E731
    errors = {}
    for case, batch in (("capture", x), ("replay_new_data", other)):
        errors[case] = rel(dynamical_scores(model, batch, cuda_graph=True, **kw),
                           dynamical_scores(model, batch, **kw))
    full = dynamical_scores(model, x, **kw)
    errors["padded_partial"] = rel(dynamical_scores(model, x[:-1], cuda_graph=True, **kw), full[:-1])
    worst = max(errors.values())
    return {"max_rel_err": worst, "errors": errors, "ok": worst <= rtol,
            "eager_partial_vs_full": rel(dynamical_scores(model, x[:-1], **kw), full[:-1])}
