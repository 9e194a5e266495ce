"""The one-pass exact path: one forward + one backward of the summed pseudo-label loss; hooks hand
each covered layer's input A and output gradient G to its rule."""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn

from raydal.scoring.grads.common import autocast, warn_once
from raydal.scoring.grads.registry import Rule, flat_terms, rule_for


class _Site:
    """One covered module: captures its input A, hooks its output (its tap child's input for timm
    norm+act modules) and, when that output's gradient G arrives in the backward pass, adds the
    module's per-sample terms to the accumulators.

    The backward pass runs towards the zero probe (and the loose copies) only, so it computes no
    weight gradients. An output whose input is a graph root (the model's input, token ids) gets
    the probe added, a full pass over it: the others lie downstream of such an output already,
    unless the model has a branch that starts from parameters alone; ``probe_all`` covers that
    case (``fired`` tells)."""

    def __init__(self, module: nn.Module, rule: Rule, wanted: dict, acc: tuple, cdtype):
        self.module, self.rule, self.wanted, self.acc, self.cdtype = module, rule, wanted, acc, cdtype
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
        self.calls += 1
        self.root_input = not args[0].requires_grad
        self.a = args[0].detach()
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
        with torch.autocast(g.device.type, enabled=False):
            a = a.to(self.cdtype) if a.is_floating_point() else a
            for norm, inner in self.rule(self.module, a, g.to(self.cdtype), self.wanted):
                self.acc[0].add_(norm)
                if inner is not None:
                    self.acc[1].add_(inner)


def _set_grad(enabled: bool) -> None:  # a hook that returns None leaves the inputs as they are
    torch.set_grad_enabled(enabled)


def _plan(model: nn.Module, selected: dict) -> tuple[list, dict, list]:
    """Split selected parameter names into covered sites [(module, rule, tap, {short: full})],
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
            sites.append((m, spec.rule, spec.tap, covered))
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


def ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype, local_grad, probe_all=False):
    """One forward + one backward of the summed pseudo-label loss. Returns ((B,) float64 squared
    norms, (B,) float64 inner products, (B,) pseudo-labels, names left to the fallback), or None
    when local_grad cut the graph (the logits are not a function of the hooked modules). A site
    the backward pass missed (a branch that starts from parameters alone) makes it run again
    with the probe on every site."""
    b = x.shape[0]
    acc = (torch.zeros(b, dtype=torch.float64, device=x.device),
           torch.zeros(b, dtype=torch.float64, device=x.device))
    plan, loose, rest = _plan(model, selected)
    wanted = lambda full: g_L[full] if g_L is not None else None  # noqa: E731
    probe = torch.zeros((), dtype=cdtype, device=x.device, requires_grad=True)
    sites = [(_Site(m, rule, {s: wanted(f) for s, f in names.items()}, acc, cdtype), tap, names)
             for m, rule, tap, names in plan]
    # a loose parameter p (1, ...) is swapped for a per-sample copy (B, ...): its gradient is then
    # the per-sample gradient, given that the model broadcasts it over the batch
    copies = {n: p.detach().expand(b, *p.shape[1:]).clone().requires_grad_() for n, p in loose.items()}
    handles = [h for site, tap, _ in sites
               for h in site.attach(tap, probe, local_grad, probe_all)]
    missed = False
    try:
        with torch.set_grad_enabled(not local_grad), autocast(x, autocast_dtype):
            logits = torch.func.functional_call(model, copies, (x,), strict=False)
        yhat = logits.argmax(1)
        loss = F.cross_entropy(logits.to(cdtype), yhat, reduction="sum")
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
                    norm, inner = flat_terms(g.to(cdtype), wanted(name))
                    acc[0].add_(norm)
                    if inner is not None:
                        acc[1].add_(inner)
    finally:
        for h in handles:
            h.remove()
    if missed and not probe_all:
        return ghost_terms(model, x, selected, g_L, autocast_dtype, cdtype, local_grad,
                           probe_all=True)
    return acc[0], acc[1], yhat, rest
