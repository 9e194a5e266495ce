"""The one-pass path: one forward + one backward of the summed pseudo-label loss; hooks hand
each covered layer's input A and output gradient G to its rule. ``one_pass`` is the engine
every gradient strategy runs: a job says what each layer's (A, G) is contracted with (the
scores' g_L slices here, ``ghost_terms``; a sketch's directions, ``raydal.scoring.sketch``)."""
from __future__ import annotations

import weakref
from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.common import autocast, warn_once
import raydal.scoring.grads.registry as registry
from raydal.scoring.grads.registry import Block, Rule, RootTerms, RuleSpec, flat_terms, rule_for


class _Scores:
    """The scores' job in ``one_pass``: each rule's terms against g_L's slices (g_c: in the
    contraction dtype). A call's per-parameter pieces are reduced once at the end: (B,) squared
    norms and inner products stacked and summed, unsquared norms squared together, and the small
    per-sample blocks concatenated into one (B, K) matrix with one norm and one product against
    g_L (one or two dispatches each instead of two accumulations per parameter)."""

    def __init__(self, g_L: dict | None, g_c: dict | None):
        self.g_L, self.g_c = g_L, g_c
        self.norms, self.roots, self.inners, self.blocks, self.block_names = [], [], [], [], []

    def rule(self, spec: RuleSpec) -> Rule:
        return spec.rule

    def wanted(self, names: dict) -> dict:
        return {s: self.g_c[full] if self.g_c is not None else None for s, full in names.items()}

    def loose(self, name: str, per_sample: torch.Tensor) -> None:
        self.add([flat_terms(per_sample, self.g_L[name] if self.g_L is not None else None)], {})

    def add(self, items, names: dict) -> None:
        for item in items:
            if isinstance(item, Block):
                per_sample = item.per_sample
                self.blocks.append(per_sample if per_sample.ndim == 2
                                   else per_sample.reshape(per_sample.shape[0], -1))
                self.block_names.append(names[item.param])
            else:
                # bf16 terms (bf16 contractions' inner products) are promoted by the stack and
                # summed in float64 below: no cast per term
                norm, inner = item
                (self.roots if isinstance(item, RootTerms) else self.norms).append(norm)
                if inner is not None:
                    self.inners.append(inner)

    def reduce(self, b: int, device, block_vector) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) float64 squared norms and inner products; block_vector(names) -> g_L over the
        blocks' parameters, flattened and concatenated in their order (None: no inner)."""
        f64 = torch.float64
        norms = [torch.stack(self.norms).sum(0, dtype=f64)] if self.norms else []
        inners = [torch.stack(self.inners).sum(0, dtype=f64)] if self.inners else []
        if self.roots:
            norms.append(torch.stack(self.roots).square().sum(0, dtype=f64))  # float32 roots
        if self.blocks:
            flat = torch.cat(self.blocks, 1) if len(self.blocks) > 1 else self.blocks[0]
            norms.append(torch.linalg.vector_norm(flat, dim=1, dtype=f64).square())
            v = block_vector(tuple(self.block_names))
            if v is not None:
                inners.append(torch.mv(flat if flat.dtype == v.dtype else flat.to(v.dtype), v)
                              .to(f64))
        zero = lambda: torch.zeros(b, dtype=f64, device=device)  # noqa: E731
        return _total(norms) if norms else zero(), _total(inners) if inners else zero()


def _total(parts: list) -> torch.Tensor:
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out


class _Site:
    """One covered module: captures its input A, hooks its output (its tap child's input for timm
    norm+act modules) and, when that output's gradient G arrives in the backward pass, hands
    rule(module, A, G, wanted) to the job's collector (``add``).

    The backward pass runs towards the zero probe (and the loose copies) only, so it computes no
    weight gradients. An output whose input is a graph root (the model's input, token ids) gets
    the probe added, a full pass over it: the others lie downstream of such an output already,
    unless the model has a branch that starts from parameters alone; ``probe_all`` covers that
    case (``fired`` tells)."""

    def __init__(self, module: nn.Module, rule: Rule, wanted: dict, names: dict, collector,
                 ctype):
        self.module, self.rule, self.wanted, self.names = module, rule, wanted, names
        self.collector, self.ctype = collector, ctype
        self.calls, self.batch, self.a, self.root_input, self.fired = 0, None, None, False, False

    def attach(self, tap: str | None, probe: torch.Tensor, local_grad: bool,
               probe_all: bool) -> list:
        self.probe, self.probe_all, m = probe, probe_all, self.module
        handles = []
        if local_grad:  # head only: the graph is built just around this module
            handles.append(m.register_forward_pre_hook(lambda *_: _set_grad(True)))
        if tap is not None:
            handles.append(m.register_forward_pre_hook(lambda mod, args: self._capture(args)))
            handles.append(m.get_submodule(tap).register_forward_pre_hook(
                lambda mod, args: (self._tap(args[0]), *args[1:])))
        else:
            handles.append(m.register_forward_hook(
                lambda mod, args, out: self._capture(args) or self._tap(out)))
        if local_grad:
            handles.append(m.register_forward_hook(lambda *_: _set_grad(False)))
        return handles

    def _capture(self, args) -> None:
        # kept as it is, not detached (a dispatch per layer): the rules run inside the backward
        # pass, where grad mode is off, so they build no graph on it
        self.calls += 1
        self.a = args[0]
        self.root_input = not self.a.requires_grad
        self.batch = self.a.shape[0]

    def _tap(self, out: torch.Tensor) -> torch.Tensor:
        """out, or out + probe (both hooked; a tensor hook gets the gradient of the value it was
        registered on, even if the tensor is changed in place later)."""
        y = out + self.probe if self.probe_all or self.root_input or not out.requires_grad else out
        a, version = self.a, self.a._version
        y.register_hook(lambda g: self._terms(a, version, g))
        return y

    def _terms(self, a: torch.Tensor, version: int, g: torch.Tensor) -> None:
        self.fired = True
        if not self.wanted:
            return
        if a._version != version:
            raise RuntimeError(f"the input of {type(self.module).__name__} was modified in place "
                               "after the layer ran; per-sample gradients would be wrong")
        ctype = self.ctype  # the contraction dtype: float32/64, or bf16 A and G as they come
        with torch.autocast(g.device.type, enabled=False):
            if a.is_floating_point() and a.dtype != ctype:
                a = a.to(ctype)
            if g.dtype != ctype:
                g = g.to(ctype)
            self.collector.add(self.rule(self.module, a, g, self.wanted), self.names)


def _set_grad(enabled: bool) -> None:  # a hook that returns None leaves the inputs as they are
    torch.set_grad_enabled(enabled)


def _plan(model: nn.Module, selected: dict) -> tuple[list, dict, list]:
    """Split selected parameter names into covered sites [(module, rule spec, {short: full})],
    loose parameters {full: param} (batch-broadcast, e.g. ViT pos_embed / cls_token) and the
    names left to the fallback."""
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    sites, loose, rest = [], {}, []
    for prefix, m in model.named_modules():
        own = {s: f"{prefix}.{s}" if prefix else s for s, _ in m.named_parameters(recurse=False)}
        own = {s: full for s, full in own.items() if full in selected}
        if not own:
            continue
        spec = rule_for(m)
        covered = {s: full for s, full in own.items()
                   if spec and s in spec.params and uses[id(selected[full])] == 1}
        if covered:
            sites.append((m, spec, covered))
        for s, full in own.items():
            p = selected[full]
            if s in covered:
                continue
            if (p.ndim >= 2 and p.shape[0] == 1 and uses[id(p)] == 1
                    and next(m.children(), None) is not None):
                loose[full] = p
            else:
                rest.append(full)
                warn_once(type(m).__qualname__, "dynamicAL: no per-sample gradient rule for %s "
                          "(parameter %r); using chunked vmap for it (add one with "
                          "raydal.scoring.grads.register_rule)", type(m).__name__, full)
    return sites, loose, rest


class ModelCache:
    """What a model's scoring calls share: the plan (walking the modules and looking up rules
    each call costs host time), g_L on the parameters' device (converted once per selection,
    not per call: on a GPU 161 pageable host-to-device copies a call otherwise) and the g_L
    vectors over each call's blocks, in the order the backward pass hands them over. The device
    buffers are filled in place when g_L changes, so a captured CUDA graph keeps reading them."""

    def __init__(self):
        self.plan_key, self.plan = None, None
        self.g_L_key, self.g_L_src, self.g_L = None, None, {}
        self.vectors: dict[tuple, torch.Tensor] = {}
        self.casts: dict[torch.dtype, dict] = {}  # g_L in a contraction dtype (bf16)

    def plan_for(self, model: nn.Module, selected: dict) -> tuple[list, dict, list]:
        key = (registry.version, id(registry._RULES), tuple(selected),
               tuple(id(p) for p in selected.values()))
        if key != self.plan_key:
            self.plan, self.plan_key = _plan(model, selected), key
            self.vectors.clear()
        sites, loose, rest = self.plan
        return sites, loose, list(rest)

    def device_g_L(self, g_L: dict, selected: dict) -> dict:
        """{name: g_L slice with the parameter's dtype and device} for the selected names."""
        key = (id(g_L), tuple((id(g_L[n]), g_L[n]._version, p.dtype, p.device)
                              for n, p in selected.items()))
        if key == self.g_L_key:
            return self.g_L
        out = {}
        for n, p in selected.items():
            src, old = g_L[n].detach(), self.g_L.get(n)
            if src.dtype == p.dtype and src.device == p.device and p.device.type == "cpu":
                out[n] = src  # nothing to convert, and no graph on the CPU to keep buffers for
            elif old is not None and old.shape == src.shape and old.dtype == p.dtype \
                    and old.device == p.device and old.device.type != "cpu":
                out[n] = old.copy_(src)  # our own buffer, in place: a captured graph reads it
            else:
                out[n] = src.to(device=p.device, dtype=p.dtype, copy=True)
        self.g_L, self.g_L_src, self.g_L_key = out, g_L, key
        for names, v in list(self.vectors.items()):
            self.vectors[names] = self._concat(names, v)
        for dtype in list(self.casts):
            self.casts[dtype] = self._cast(dtype, self.casts[dtype])
        return out

    def g_L_as(self, dtype: torch.dtype) -> dict:
        """The device g_L in dtype (bf16 contractions), converted once per selection and filled
        in place when g_L changes (a captured graph keeps reading it)."""
        if dtype not in self.casts:
            self.casts[dtype] = self._cast(dtype, {})
        return self.casts[dtype]

    def _cast(self, dtype: torch.dtype, old: dict) -> dict:
        out = {}
        for n, t in self.g_L.items():
            o = old.get(n)
            out[n] = o.copy_(t) if o is not None and o.shape == t.shape \
                and o.device == t.device else t.to(dtype, copy=True)
        return out

    def block_vector(self, names: tuple) -> torch.Tensor:
        v = self.vectors.get(names)
        if v is None:
            v = self.vectors[names] = self._concat(names, None)
        return v

    def _concat(self, names: tuple, out: torch.Tensor | None) -> torch.Tensor:
        parts = [self.g_L[n].reshape(-1) for n in names]
        if out is not None and out.numel() == sum(p.numel() for p in parts) \
                and out.dtype == parts[0].dtype and out.device == parts[0].device:
            return torch.cat(parts, out=out)
        return torch.cat(parts)


_CACHES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def model_cache(model: nn.Module, selected: dict) -> ModelCache:
    """The cache of this model and parameter selection (dropped with the model)."""
    per_model = _CACHES.get(model)
    if per_model is None:
        per_model = _CACHES[model] = {}
    key = tuple(selected)
    if key not in per_model:
        per_model[key] = ModelCache()
    return per_model[key]


def ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype, local_grad,
                cache: ModelCache | None = None, ctype: torch.dtype | None = None):
    """The scores' pass. Returns ((B,) float64 squared norms, (B,) float64 inner products, (B,)
    pseudo-labels, names left to the fallback), or None when local_grad cut the graph. g_L: on the
    parameters' devices (``ModelCache.device_g_L``) or None. ctype: the dtype the rules contract A
    and G in (default cdtype); bf16 hands them autocast's bf16 tensors without an upcast copy,
    with g_L's slices in bf16 and float32 sums (small blocks, e.g. biases and norm affine
    parameters, stay float32). No host synchronisation: a CUDA graph can capture it."""
    cache = cache if cache is not None else model_cache(model, selected)
    ctype = ctype or cdtype
    g_c = g_L if g_L is None or ctype == cdtype else cache.g_L_as(ctype)
    result = one_pass(model, x, selected, lambda: _Scores(g_L, g_c), autocast_dtype, cdtype,
                      local_grad, cache, ctype)
    if result is None:
        return None
    scores, yhat, rest = result
    norm, inner = scores.reduce(x.shape[0], x.device,
                                cache.block_vector if g_L is not None else lambda names: None)
    return norm, inner, yhat, rest


def one_pass(model, x, selected, new_job, autocast_dtype, cdtype, local_grad, cache: ModelCache,
             ctype: torch.dtype, probe_all: bool = False):
    """One forward + one backward of the summed pseudo-label loss, model in eval mode. A fresh job
    ``new_job()`` says what each covered layer's (A, G) is contracted with: job.rule(spec) the
    layer's contraction (called as rule(module, A, G, wanted) in the backward pass, A and G in
    ctype), job.wanted({short: full name}) its ``wanted``, job.add(result, names) takes the
    result, job.loose(name, (B, ...) per-sample gradient) takes a loose parameter's. Returns
    (job, (B,) pseudo-labels, names left to the fallback: no rule, or a module called more than
    once), or None when local_grad cut the graph (the logits are not a function of the hooked
    modules). A site the backward pass missed (a branch that starts from parameters alone) makes
    it run again with the probe on every site."""
    b = x.shape[0]
    plan, loose, rest = cache.plan_for(model, selected)
    job = new_job()
    probe = torch.zeros((), dtype=cdtype, device=x.device, requires_grad=True)
    sites = [(_Site(m, job.rule(spec), job.wanted(names), names, job, ctype), spec.tap, names)
             for m, spec, names in plan]
    # a loose parameter p (1, ...) is swapped for a per-sample copy (B, ...): its gradient is then
    # the per-sample gradient, given that the model broadcasts it over the batch
    copies = {n: p.detach().expand(b, *p.shape[1:]).clone().requires_grad_() for n, p in loose.items()}
    handles = [h for site, tap, _ in sites
               for h in site.attach(tap, probe, local_grad, probe_all)]
    missed = False
    try:
        capturing = x.is_cuda and torch.cuda.is_current_stream_capturing()
        with torch.set_grad_enabled(not local_grad), autocast(x, autocast_dtype,
                                                              cache=not capturing):
            logits = torch.func.functional_call(model, copies, (x,), strict=False) if copies \
                else model(x)
        yhat = logits.argmax(1)
        loss = F.cross_entropy(logits if logits.dtype == cdtype else logits.to(cdtype), yhat,
                               reduction="sum")
        if local_grad and not loss.requires_grad:
            return None
        for site, _, names in sites:
            if site.calls > 1 or site.batch not in (None, b):
                site.wanted = {}  # reused module or not batch-aligned: its terms go to vmap
                rest += list(names.values())
                warn_once(f"reuse:{type(site.module).__qualname__}", "dynamicAL: %s is called "
                          "more than once or not per sample; using chunked vmap for it",
                          type(site.module).__name__)
        if loss.requires_grad:
            inputs = [probe, *copies.values()]
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
            missed = any(site.wanted and not site.fired for site, _, _ in sites)
            for name, g in zip(copies, grads[1:]):
                if g is not None:
                    job.loose(name, g if g.dtype == cdtype else g.to(cdtype))
    finally:
        for h in handles:
            h.remove()
    if missed and not probe_all:
        return one_pass(model, x, selected, new_job, autocast_dtype, cdtype, local_grad, cache,
                        ctype, probe_all=True)
    return job, yhat, rest
