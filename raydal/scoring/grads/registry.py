"""The per-layer gradient rule registry (a seam like opacus's ``register_grad_sampler``) and the
small contractions every rule shares.

A rule turns a layer's input A (B, ...) and its output gradient G (B, ...) into each parameter's
per-sample squared gradient norm and inner product with g_L, without a per-sample gradient
matrix for the whole network. Its optional projection turns the same (A, G) into the per-sample
gradients' projections on a sketch's seeded directions (``raydal.scoring.sketch``); a rule
without one is projected through the rule itself (slower, same result).
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

import torch
from torch import nn

# (per-sample squared norms (B,), per-sample inner products with g_L (B,) or None)
Terms = tuple[torch.Tensor, "torch.Tensor | None"]
# rule(module, A, G, wanted) -> one Terms per parameter; wanted: {short parameter name: that
# parameter's g_L slice, or None when no inner product is needed}
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict], Iterable[Terms]]
# project(module, A, G, dirs) -> (B, dim): the sum over the parameters in dirs of their per-sample
# gradients' projections on dim directions; dirs: {short parameter name: Directions}
Project = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict], torch.Tensor]
# a parameter's dim directions d_j: (D (dim, *shape),) for a vector (or scalar), or the factors
# (R (dim, shape[0]), S (dim, *shape[1:])) of rank-one directions d_j = r_j (x) s_j otherwise
Directions = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class RuleSpec:
    """A registered rule. params: the short parameter names it covers. tap: name of a child
    module whose INPUT is the layer's output (timm's norm+act modules apply dropout and the
    activation inside; G is taken there), None for the module's own output. applies(module):
    False sends a module to the fallback; it may raise ValueError for a module whose per-sample
    gradients are undefined. project: the rule's own sketch contraction, or None (the sketch
    projects through ``rule``)."""

    rule: Rule
    params: tuple[str, ...]
    tap: str | None
    applies: Callable[[nn.Module], bool] | None
    project: Project | None = None


_RULES: dict[type, RuleSpec] = {}
#: bumped by every registration: cached per-model plans (``onepass``) are rebuilt after it
version = 0


def register_rule(*module_types: type, params: tuple[str, ...] = ("weight", "bias"),
                  tap: str | None = None,
                  applies: Callable[[nn.Module], bool] | None = None,
                  project: Project | None = None) -> Callable[[Rule], Rule]:
    """Decorator registering ``rule(module, a, g, wanted)`` for the given module types.

    a: the module's input (B, ...); g: the gradient of the summed loss w.r.t. its output (B, ...)
    (float32, float64 for float64 models, or bfloat16 with ``contraction_dtype=torch.bfloat16``,
    the slices of g_L then bfloat16 too: reduce with ``acc`` and return float32 where you can); wanted: {name in params: g_L slice shaped like the
    parameter, or None}. The rule returns, for each wanted parameter, the pair ((B,) squared
    norms of the per-sample gradients, (B,) their inner products with the g_L slice, or None when
    the slice is None). A module of a registered type, or of a subclass that does not override
    ``forward``, uses the rule; one that overrides ``forward`` has other maths and falls back
    to vmap. Registering a type again replaces its rule. Example::

        @register_rule(MyScale, params=("gain",))
        def my_scale(module, a, g, wanted):
            per_sample = (g * a * 2 * module.gain.view(1, -1, 1, 1)).sum((2, 3))  # (B, C)
            return [flat_terms(per_sample, wanted["gain"])]

    The same rule serves every gradient strategy: dynamicAL and gradnorm through its terms,
    dynamicAL_batch's gradient sketch through ``project(module, a, g, dirs)`` (float32 or float64
    a and g; dirs: {name in params: ``Directions``}) returning the (B, dim) sum over dirs of
    the per-sample gradients' projections <d_j, grad_u>; ``projection(per_sample, dirs[name])``
    projects a per-sample gradient. Without ``project`` the sketch projects through the rule:
    a returned ``Block`` is projected as it is, the other parameters' inner products are taken
    with the dense directions (torch.func.vmap over them, a loop where vmap cannot run the rule):
    exact, at the cost of dim inner products.
    """
    if not module_types or not all(isinstance(t, type) and issubclass(t, nn.Module)
                                   for t in module_types):
        raise TypeError(f"register_rule needs nn.Module subclasses, got {module_types!r}")
    if isinstance(params, str) or not params:
        raise TypeError(f"params must be a non-empty tuple of parameter names, got {params!r}")

    def decorator(rule: Rule) -> Rule:
        global version
        version += 1
        for t in module_types:
            _RULES[t] = RuleSpec(rule, tuple(params), tap, applies, project)
        return rule
    return decorator


#: rule modules registered lazily: {library module name: rule module name}
_PROVIDERS: dict[str, str] = {}


def register_rule_provider(library: str, rules_module: str) -> None:
    """Import ``rules_module`` (whose import registers rules) the first time a rule is looked up
    after ``library`` has been imported: a library's layers get rules without importing the
    library for users who never load it (``raydal.scoring.grads`` declares timm's this way)."""
    _PROVIDERS[library] = rules_module


def _load_providers() -> None:
    for library in [lib for lib in _PROVIDERS if lib in sys.modules]:
        importlib.import_module(_PROVIDERS.pop(library))


def rule_for(module: nn.Module) -> RuleSpec | None:
    """The rule of the nearest registered class in the module's MRO whose ``forward`` the module
    still uses, or None."""
    _load_providers()
    forward = type(module).forward
    for cls in type(module).__mro__:
        spec = _RULES.get(cls)
        if spec is not None:
            if cls.forward is not forward:
                return None
            if spec.applies is not None and not spec.applies(module):
                return None
            return spec
    return None


# --- contractions shared by the rules ------------------------------------------------------------

class Block(NamedTuple):
    """A small per-sample gradient (B, k) of the parameter named ``param`` (a short name, as in
    ``wanted``): built-in rules hand these over instead of Terms, and the scorer concatenates all
    of a call's blocks and reduces them with one norm and one matrix-vector product against g_L
    flattened once per selection (bias, norm affine: one Terms pair per parameter would cost two
    reductions and two accumulations each)."""

    param: str
    per_sample: torch.Tensor


class RootTerms(NamedTuple):
    """Terms whose norm is NOT squared yet ((B,) ||g_u||): the scorer squares all of them at once."""

    root: torch.Tensor
    inner: "torch.Tensor | None"


def acc(t: torch.Tensor) -> torch.dtype | None:
    """The dtype to reduce t in: float32 for bf16/fp16 contractions (the mixed-precision path:
    reductions read the half-precision tensor and accumulate and return float32, no upcast copy),
    None (t's own) otherwise."""
    return torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else None


def flat_terms(per_sample: torch.Tensor, v: torch.Tensor | None) -> Terms:
    """per_sample (B, ...) gradients, v (...) -> ((B,) squared norms, (B,) <., v> or None)."""
    flat = per_sample.reshape(per_sample.shape[0], -1)
    # vector_norm is one vectorised pass; square().sum() makes two
    return torch.linalg.vector_norm(flat, dim=1, dtype=acc(flat)).square(), \
        (torch.mv(flat, v.reshape(-1)) if v is not None else None)


def root_terms(per_sample: torch.Tensor, v: torch.Tensor | None) -> RootTerms:
    """flat_terms with the norm left unsquared (the scorer squares all of a call's at once)."""
    flat = per_sample.reshape(per_sample.shape[0], -1)
    return RootTerms(torch.linalg.vector_norm(flat, dim=1, dtype=acc(flat)),
                     torch.mv(flat, v.reshape(-1)) if v is not None else None)


def dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, ...) x (B, ...) -> (B,) per-sample inner products (a mul and a sum: einsum would
    dispatch a permute, reshapes and a bmm); summed in float32 for half-precision inputs."""
    return torch.mul(x, y).sum(tuple(range(1, x.ndim)), dtype=acc(x)) if x.ndim > 1 else x * y


def projection(per_sample: torch.Tensor, dirs: Directions) -> torch.Tensor:
    """(B, *shape) per-sample gradients -> (B, dim) projections <d_j, grad_u> on ``Directions``
    (rank-one: r_j . (G_u s_j), G_u viewed as (shape[0], rest); no dense direction is built)."""
    b = per_sample.shape[0]
    if len(dirs) == 1:
        return per_sample.reshape(b, -1) @ dirs[0].reshape(dirs[0].shape[0], -1).T
    r, s = dirs
    t = per_sample.reshape(b, r.shape[1], -1) @ s.reshape(s.shape[0], -1).T  # (B, o, dim)
    return (t * r.T).sum(1)


def gram_norm(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """||sum_t g_t u_t^T||^2 = <u u^T, g g^T> per sample; g (B, [n,] T, o), u (B, [n,] T, i)."""
    if g.ndim == 3:
        return dot(torch.bmm(u, u.transpose(1, 2)), torch.bmm(g, g.transpose(1, 2)))
    return dot(u @ u.transpose(-1, -2), g @ g.transpose(-1, -2))


#: use_gram's crossover: the Gram form when T (o + i) <= factor x o i, with and without the inner
#: product. Measured end to end, side by side (2026-12-05, 2-core CPU; resnet18@32/64 and
#: resnet50@224/16, each factor against the others in one process): the Gram form's inner product
#: is the layer's own convolution with g_L's slice, about what the materialised form's per-sample
#: weight gradients cost more than the Gram form's norm, so with it the forms cross near
#: T (o + i) = o i (0.5 before: fast 1.40 -> 1.21 training steps at resnet50, 1.16 -> 1.08 at
#: resnet18); for norms alone at 1.5 (resnet18's 8x8 layers, 1.11, gain 5%).
GRAM_CROSSOVER = {"inner": 1.0, "norm": 1.5}


def use_gram(t: int, o: int, i: int, inner: bool) -> bool:
    """Gram form (~T^2 (o+i) flops, B x T x T memory) or materialised per-sample weight gradient
    (~T o i flops, B x o x i memory) for a weight (o, i) used at T positions: the cheaper one
    (Bu et al.'s mixed ghost norm). inner: the inner product with g_L is wanted too, which
    costs the Gram form a convolution (T o i flops) more and the materialised form almost
    nothing."""
    return t * (o + i) <= GRAM_CROSSOVER["inner" if inner else "norm"] * o * i
