"""Exact dynamicAL scores without a per-sample gradient matrix.

s(u) = ||g_u||^2 + ip_weight * <g_L, g_u>, g_u the gradient of CE(f(x_u), argmax f(x_u)) over the
selected parameters, model in eval mode. In eval mode samples are independent, so one backward pass
of the SUMMED loss gives every layer its per-sample output gradients G (B, ...). With the layer's
input A, each parameter's per-sample gradient is a known function of (A, G), and its squared norm and
inner product with g_L reduce to small per-sample contractions ("ghost norms", Goodfellow 2015; Bu
et al. mixed ghost norm for convolutions). The B x P matrix is never built: peak memory is that of
one training step. Parameters no rule covers fall back to chunked ``torch.func.vmap`` for
themselves only.
"""
from __future__ import annotations

import contextlib
import functools
import logging
from collections import Counter
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("raydal")
_warned: set[str] = set()

# rule(module, A, G, wanted) -> [(norm_sq (B,), inner (B,) | None), ...], one pair per parameter;
# wanted: {"weight" | "bias": g_L slice, or None when no inner product is needed}.
Terms = tuple[torch.Tensor, "torch.Tensor | None"]
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict], list[Terms]]


def labeled_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
                     params: str = "all") -> dict[str, torch.Tensor]:
    """g_L = gradient of the SUMMED cross-entropy over (x (N, ...), y (N,) int64), model in eval
    mode, as {parameter name: tensor shaped like the parameter}; batches moved to the model's
    device. params: "all" trainable parameters or "head" (the classifier)."""
    selected = _select_params(model, params)
    total = {n: torch.zeros_like(p) for n, p in selected.items()}
    device = _device(model)
    with _eval_mode(model):
        for start in range(0, len(x), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            loss = F.cross_entropy(model(xb), yb, reduction="sum")
            grads = torch.autograd.grad(loss, list(selected.values()), allow_unused=True)
            for name, g in zip(selected, grads):
                if g is not None:
                    total[name] += g
    return total


def dynamical_scores(model: nn.Module, x: torch.Tensor, labeled_x: torch.Tensor | None = None,
                     labeled_y: torch.Tensor | None = None, ip_weight: float = 2.0, *,
                     g_L: dict[str, torch.Tensor] | None = None, params: str = "all",
                     method: str = "fast", chunk_size: int = 32,
                     autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """dynamicAL scores ||g_u||^2 + ip_weight * <g_L, g_u> of x (B, ...) on the model's device:
    (B,) float64 on x's device.

    g_L: precomputed ``labeled_gradient`` (extra names ignored), else computed from labeled_x (N,
    ...), labeled_y (N,); neither is needed when ip_weight == 0. params: "all" or "head" (the
    classifier only, i.e. the closed form ||softmax(z) - e_yhat||^2 (||h||^2 + 1) for a linear
    head: one forward pass with a graph around the head alone). method:
    "fast" (exact, per-layer contractions) or "vmap" (chunked torch.func reference, chunk_size
    samples at a time). autocast_dtype: e.g. torch.bfloat16 for the forward/backward passes;
    per-layer terms are then still computed in float32.
    """
    if method not in ("fast", "vmap"):
        raise ValueError(f"method must be 'fast' or 'vmap', got {method!r}")
    selected = _select_params(model, params)
    need_inner = ip_weight != 0
    with _eval_mode(model):
        if need_inner:
            if g_L is None:
                if labeled_x is None or labeled_y is None:
                    raise ValueError("dynamical_scores needs g_L or both labeled_x and labeled_y")
                g_L = labeled_gradient(model, labeled_x, labeled_y, params=params)
            missing = sorted(set(selected) - set(g_L))
            if missing:
                raise ValueError(f"g_L lacks {len(missing)} selected parameters, e.g. {missing[:3]}; "
                                 f"compute it with labeled_gradient(model, ..., params={params!r})")
            g_L = {n: g_L[n].to(selected[n]) for n in selected}
        else:
            g_L = None
        cdtype = torch.float64 if any(p.dtype == torch.float64 for p in selected.values()) \
            else torch.float32
        if method == "vmap":
            with torch.no_grad(), _autocast(x, autocast_dtype):
                yhat = model(x).argmax(1)
            norm, inner = _vmap_terms(model, x, yhat, list(selected), g_L, chunk_size,
                                      autocast_dtype, cdtype)
        else:
            result = _ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype,
                                  local_grad=params == "head")
            if result is None:  # something after the classifier: build the graph everywhere
                result = _ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype,
                                      local_grad=False)
            norm, inner, yhat, rest = result
            if rest:
                n2, i2 = _vmap_terms(model, x, yhat, rest, g_L, chunk_size, autocast_dtype, cdtype)
                norm, inner = norm + n2, inner + i2
    return norm + ip_weight * inner


# --- parameter selection and model state -------------------------------------------------------

def _select_params(model: nn.Module, params: str) -> dict[str, nn.Parameter]:
    if params == "all":
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    if params != "head":
        raise ValueError(f"params must be 'all' or 'head', got {params!r}")
    head = model.get_classifier() if callable(getattr(model, "get_classifier", None)) else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        raise ValueError("params='head' needs a classifier: a timm model with get_classifier() "
                         "or an nn.Linear layer; use params='all'")
    ids = {id(p) for p in head.parameters()}
    return {n: p for n, p in model.named_parameters() if id(p) in ids and p.requires_grad}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside; the modules that were training are set back afterwards."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def _autocast(x: torch.Tensor, dtype: torch.dtype | None):
    return torch.autocast(x.device.type, dtype=dtype) if dtype is not None \
        else contextlib.nullcontext()


def _warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


# --- per-layer rules: per-sample squared norms and inner products from (A, G) --------------------

def _flat_terms(per_sample: torch.Tensor, v: torch.Tensor | None) -> Terms:
    """per_sample (B, ...) gradients, v (...) -> ((B,) squared norms, (B,) <., v> or None)."""
    flat = per_sample.reshape(per_sample.shape[0], -1)
    # vector_norm is one vectorised pass; square().sum() makes two
    return torch.linalg.vector_norm(flat, dim=1).square(), \
        (flat @ v.reshape(-1) if v is not None else None)


def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) per-sample inner products."""
    return torch.einsum("bi,bi->b", x.flatten(1), y.flatten(1))  # one pass, no B x ... product


def _use_gram(t: int, o: int, i: int) -> bool:
    """Gram form (~T^2 (o+i) flops, B x T x T memory) or materialised per-sample weight gradient
    (~T o i flops, B x o x i memory) for a weight (o, i) used at T positions: the cheaper one
    (Bu et al.'s mixed ghost norm); the crossover was measured at about T (o + i) = o i."""
    return t * (o + i) <= o * i


def _gram_norm(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """||sum_t g_t u_t^T||^2 = <u u^T, g g^T> per sample; g (B, [n,] T, o), u (B, [n,] T, i)."""
    return _dot(u @ u.transpose(-1, -2), g @ g.transpose(-1, -2))


def _linear_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    b = g.shape[0]
    a, g = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])  # (B, T, in), (B, T, out)
    out = []
    if "weight" in wanted:
        v = wanted["weight"]
        if _use_gram(g.shape[1], g.shape[2], a.shape[2]):
            out.append((_gram_norm(g, a), _dot(g, F.linear(a, v)) if v is not None else None))
        else:
            out.append(_flat_terms(g.transpose(1, 2) @ a, v))
    if "bias" in wanted:
        out.append(_flat_terms(g.sum(1), wanted["bias"]))
    return out


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


def _unfold(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """Conv1d/2d input (B, C, *S) -> im2col patches (B, C*prod(kernel), T)."""
    if _pointwise(m):
        return a.flatten(2)
    a, padding = _explicit_padding(m, a)
    kernel, dilation, stride = m.kernel_size, m.dilation, m.stride
    if a.ndim == 3:  # as a 2-d convolution over (1, L)
        a = a.unsqueeze(2)
        kernel, dilation, padding, stride = (1, *kernel), (1, *dilation), (0, *padding), (1, *stride)
    return F.unfold(a, kernel, dilation, padding, stride)


def _per_sample_conv_weight(m: nn.Module, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients (B, *weight.shape): a batched matmul for pointwise convs, else
    ONE weight gradient of a convolution with the batch folded into the groups (3-4x faster than
    im2col + batched matmul on CPU)."""
    b = a.shape[0]
    if _pointwise(m):
        return (g.flatten(2) @ a.flatten(2).transpose(1, 2)).reshape(b, *m.weight.shape)
    a, padding = _explicit_padding(m, a)
    fold = lambda t: t.reshape(1, b * t.shape[1], *t.shape[2:])  # noqa: E731
    weight_grad = torch.nn.grad.conv1d_weight if a.ndim == 3 else torch.nn.grad.conv2d_weight
    w = weight_grad(fold(a), (b * m.out_channels, *m.weight.shape[1:]), fold(g), m.stride,
                    padding, m.dilation, m.groups * b)
    return w.reshape(b, *m.weight.shape)


def _conv_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    b, n, o = g.shape[0], m.groups, m.out_channels // m.groups
    out = []
    if "weight" in wanted:
        v, t, i = wanted["weight"], g[0, 0].numel(), m.weight[0].numel()
        if _use_gram(t, o, i):
            u = _unfold(m, a).reshape(b, n, i, t).transpose(2, 3)  # (B, groups, T, i)
            out.append((_gram_norm(g.reshape(b, n, o, t).transpose(2, 3), u),
                        _dot(g, m._conv_forward(a, v, None)) if v is not None else None))
        else:
            out.append(_flat_terms(_per_sample_conv_weight(m, a, g), v))
    if "bias" in wanted:
        out.append(_flat_terms(g.flatten(2).sum(2), wanted["bias"]))
    return out


def _affine_terms(g: torch.Tensor, g_xhat: torch.Tensor, wanted: dict) -> list[Terms]:
    """Elementwise affine y = xhat * weight + bias: per-sample gradients g_xhat (B, *weight) =
    sum over positions of G * xhat, and the sum of G (B, *bias)."""
    out = []
    if "weight" in wanted:
        out.append(_flat_terms(g_xhat, wanted["weight"]))
    if "bias" in wanted:
        out.append(_flat_terms(g, wanted["bias"]))
    return out


def _channel_dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) x (B, C, *S) -> (B, C) sums over positions, in one pass."""
    return torch.einsum("bcs,bcs->bc", x.flatten(2), y.flatten(2))


def _batchnorm_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    # sum_s G (A - mean) rstd = (sum_s G A - mean sum_s G) rstd: no normalised copy of A
    a, g = a.reshape(*a.shape[:2], -1), g.reshape(*g.shape[:2], -1)
    g_sum = g.sum(2)
    g_xhat = ((_channel_dot(g, a) - m.running_mean * g_sum) * torch.rsqrt(m.running_var + m.eps)
              if "weight" in wanted else None)
    return _affine_terms(g_sum, g_xhat, wanted)


def _groupnorm_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    xhat = F.group_norm(a, m.num_groups, eps=m.eps)
    return _affine_terms(g.flatten(2).sum(2), _channel_dot(g, xhat), wanted)


def _layernorm_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    shape, b = m.normalized_shape, a.shape[0]
    xhat = F.layer_norm(a, shape, eps=m.eps)
    g, xhat = g.reshape(b, -1, *shape), xhat.reshape(b, -1, *shape)  # (B, positions, *shape)
    return _affine_terms(g.sum(1), torch.einsum("bs...,bs...->b...", g, xhat), wanted)


def _embedding_terms(m: nn.Module, a: torch.Tensor, g: torch.Tensor, wanted: dict) -> list[Terms]:
    """Per-sample gradient rows are sums of G over positions holding the same index."""
    b = g.shape[0]
    idx = a.reshape(b, -1)
    g = g.reshape(b, idx.shape[1], -1)
    if m.padding_idx is not None:
        g = g * (idx != m.padding_idx).unsqueeze(-1)
    same = idx.unsqueeze(2) == idx.unsqueeze(1)
    norm = ((g @ g.transpose(1, 2)) * same).sum((1, 2))
    v = wanted["weight"]
    return [(norm, (v[idx] * g).sum((1, 2)) if v is not None else None)]


@functools.cache
def _rules() -> dict[Callable, tuple[Rule, bool]]:
    """forward function -> (rule, output gradient taken at ``module.drop``'s input). Matching the
    forward function (not isinstance) keeps subclasses with other maths (StdConv2d, Conv2dSame,
    LayerNorm2d) out; they fall back to vmap."""
    rules = {nn.Linear.forward: (_linear_terms, False),
             nn.Conv1d.forward: (_conv_terms, False),
             nn.Conv2d.forward: (_conv_terms, False),
             nn.modules.batchnorm._BatchNorm.forward: (_batchnorm_terms, False),
             nn.GroupNorm.forward: (_groupnorm_terms, False),
             nn.LayerNorm.forward: (_layernorm_terms, False),
             nn.Embedding.forward: (_embedding_terms, False)}
    try:
        from timm import layers
    except ImportError:
        return rules
    # timm's norm+act modules apply drop and act inside: their BN/GN/LN output is drop's input.
    rules.update({layers.Linear.forward: (_linear_terms, False),
                  layers.LayerNorm.forward: (_layernorm_terms, False),
                  layers.BatchNormAct2d.forward: (_batchnorm_terms, True),
                  layers.GroupNormAct.forward: (_groupnorm_terms, True),
                  layers.GroupNorm1Act.forward: (_groupnorm_terms, True),
                  layers.LayerNormAct.forward: (_layernorm_terms, True)})
    return rules


def _rule_for(m: nn.Module) -> tuple[Rule, bool] | None:
    rule = _rules().get(type(m).forward)
    if rule is None:
        return None
    if isinstance(m, nn.Embedding) and (m.max_norm is not None or m.scale_grad_by_freq):
        return None
    if rule[0] is _batchnorm_terms and m.running_mean is None:
        raise ValueError(f"{type(m).__name__} has no running statistics: in eval mode it "
                         "normalises with batch statistics, so per-sample gradients are undefined")
    return rule


# --- the one-pass exact path --------------------------------------------------------------------

class _Site:
    """One covered module: captures its input A, adds the zero probe to its output (to the
    pre-activation for timm norm+act modules) and, when that output's gradient G arrives in the
    backward pass, adds the module's per-sample terms to the accumulators."""

    def __init__(self, module: nn.Module, rule: Rule, wanted: dict, acc: tuple, cdtype):
        self.module, self.rule, self.wanted, self.acc, self.cdtype = module, rule, wanted, acc, cdtype
        self.calls, self.batch, self.a = 0, None, None

    def attach(self, pre_act: bool, probe: torch.Tensor, local_grad: bool) -> list:
        self.probe, m = probe, self.module
        handles = []
        if local_grad:  # head only: the graph is built just around this module
            handles.append(m.register_forward_pre_hook(lambda *_: _set_grad(True)))
        if pre_act:
            handles.append(m.register_forward_pre_hook(lambda mod, args: self._capture(args)))
            handles.append(m.drop.register_forward_pre_hook(
                lambda mod, args: (self._tap(args[0]), *args[1:])))
        else:
            handles.append(m.register_forward_hook(
                lambda mod, args, out: self._capture(args) or self._tap(out)))
        if local_grad:
            handles.append(m.register_forward_hook(lambda *_: _set_grad(False)))
        return handles

    def _capture(self, args) -> None:
        self.calls += 1
        self.a = args[0].detach()
        self.batch = self.a.shape[0]

    def _tap(self, out: torch.Tensor) -> torch.Tensor:
        y = out + self.probe  # hook on y: gradient of this version even if y is changed in place
        a, version = self.a, self.a._version
        y.register_hook(lambda g: self._terms(a, version, g))
        return y

    def _terms(self, a: torch.Tensor, version: int, g: torch.Tensor) -> None:
        if not self.wanted:
            return
        if a._version != version:
            raise RuntimeError(f"the input of {type(self.module).__name__} was modified in place "
                               "after the layer ran; per-sample gradients would be wrong")
        with torch.autocast(g.device.type, enabled=False):
            a = a.to(self.cdtype) if a.is_floating_point() else a
            for norm, inner in self.rule(self.module, a, g.to(self.cdtype), self.wanted):
                self.acc[0].add_(norm)
                if inner is not None:
                    self.acc[1].add_(inner)


def _set_grad(enabled: bool) -> None:
    torch.set_grad_enabled(enabled)


def _plan(model: nn.Module, selected: dict) -> tuple[list, dict, list]:
    """Split selected parameter names into covered sites [(module, rule, pre_act, {short: full})],
    loose parameters {full: param} (batch-broadcast, e.g. ViT pos_embed / cls_token) and the
    names left to the vmap fallback."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    sites, loose, rest = [], {}, []
    for prefix, m in model.named_modules():
        own = {s: f"{prefix}.{s}" if prefix else s for s, _ in m.named_parameters(recurse=False)}
        own = {s: full for s, full in own.items() if full in selected}
        if not own:
            continue
        rule = _rule_for(m)
        covered = {s: full for s, full in own.items()
                   if rule and s in ("weight", "bias") and uses[id(selected[full])] == 1}
        if covered:
            sites.append((m, rule[0], rule[1], covered))
        for s, full in own.items():
            p = selected[full]
            if s in covered:
                continue
            if (p.ndim >= 2 and p.shape[0] == 1 and uses[id(p)] == 1
                    and next(m.children(), None) is not None):
                loose[full] = p
            else:
                rest.append(full)
                _warn_once(type(m).__qualname__, "dynamicAL: no per-sample gradient rule for %s "
                           "(parameter %r); using chunked vmap for it", type(m).__name__, full)
    return sites, loose, rest


def _ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype, local_grad):
    """One forward + one backward of the summed pseudo-label loss. Returns ((B,) float64 squared
    norms, (B,) float64 inner products, (B,) pseudo-labels, names left to the fallback), or None
    when local_grad cut the graph (the logits are not a function of the hooked modules)."""
    b = x.shape[0]
    acc = (torch.zeros(b, dtype=torch.float64, device=x.device),
           torch.zeros(b, dtype=torch.float64, device=x.device))
    plan, loose, rest = _plan(model, selected)
    wanted = lambda full: g_L[full] if g_L is not None else None  # noqa: E731
    probe = torch.zeros((), dtype=cdtype, device=x.device, requires_grad=True)
    sites = [(_Site(m, rule, {s: wanted(f) for s, f in names.items()}, acc, cdtype), pre_act, names)
             for m, rule, pre_act, names in plan]
    # a loose parameter p (1, ...) is swapped for a per-sample copy (B, ...): its gradient is then
    # the per-sample gradient, given that the model broadcasts it over the batch
    copies = {n: p.detach().expand(b, *p.shape[1:]).clone().requires_grad_() for n, p in loose.items()}
    handles = [h for site, pre_act, _ in sites for h in site.attach(pre_act, probe, local_grad)]
    try:
        with torch.set_grad_enabled(not local_grad), _autocast(x, autocast_dtype):
            logits = torch.func.functional_call(model, copies, (x,), strict=False)
        yhat = logits.argmax(1)
        loss = F.cross_entropy(logits.to(cdtype), yhat, reduction="sum")
        if local_grad and not loss.requires_grad:
            return None
        for site, _, names in sites:
            if site.calls > 1 or site.batch not in (None, b):
                site.wanted = {}  # reused module or not batch-aligned: its terms go to vmap
                rest += list(names.values())
                _warn_once(f"reuse:{type(site.module).__qualname__}", "dynamicAL: %s is called "
                           "more than once or not per sample; using chunked vmap for it",
                           type(site.module).__name__)
        if loss.requires_grad:
            inputs = [probe, *copies.values()]
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            for name, g in zip(copies, grads[1:]):
                if g is not None:
                    norm, inner = _flat_terms(g.to(cdtype), wanted(name))
                    acc[0].add_(norm)
                    if inner is not None:
                        acc[1].add_(inner)
    finally:
        for h in handles:
            h.remove()
    return acc[0], acc[1], yhat, rest


# --- chunked vmap: reference and fallback -------------------------------------------------------

def _vmap_terms(model, x, yhat, names, g_L, chunk_size, autocast_dtype, cdtype):
    """Per-sample gradients of the named parameters, chunk_size samples at a time, each chunk
    reduced at once (memory chunk_size x P). Returns (B,) float64 squared norms and inner
    products with g_L (zeros when g_L is None)."""
    params = dict(model.named_parameters())
    sub = {n: params[n].detach() for n in names}

    def loss_one(p, xi, yi):
        with _autocast(x, autocast_dtype):
            out = torch.func.functional_call(model, p, (xi.unsqueeze(0),), strict=False)
        return F.cross_entropy(out.to(cdtype), yi.unsqueeze(0))

    per_sample = torch.func.vmap(torch.func.grad(loss_one), in_dims=(None, 0, 0))
    norm = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    inner = torch.zeros_like(norm)
    with torch.no_grad():
        for start in range(0, len(x), chunk_size):
            sl = slice(start, start + chunk_size)
            for n, g in per_sample(sub, x[sl], yhat[sl]).items():
                n2, i2 = _flat_terms(g.to(cdtype), g_L[n] if g_L is not None else None)
                norm[sl] += n2
                if i2 is not None:
                    inner[sl] += i2
    return norm, inner
