"""dynamicAL (Wang et al., NeurIPS 2022): pick the pool samples that most speed up training.

``dynamicAL`` is the paper's score: s(u) = ||g_u||^2 + ip_weight * <g_L, g_u> with ip_weight 2,
g_u the pseudo-label gradient of candidate u over all trainable parameters (eval mode) and g_L the
labeled set's summed gradient with true labels (computed once per round by ``prepare``, shipped
to the actors). ``gradnorm`` is the paper's ablation, ||g_u||^2 alone: it needs no labeled set and
ranks the pool much like entropy (Spearman 0.97-0.99 in docs/quality.md) while weighing in the
whole network's gradient. Until 2026-12-04 ``dynamicAL`` with no options meant ``gradnorm``: the
results written before then name it so (docs/quality.md says which). The maths is in
``raydal.scoring.grads``.

Why the two are kept apart: the paper's analysis assumes training converged, where g_L = 0 and the
two agree; after real training (Adam, mini-batches, BatchNorm's train/eval gap) the summed g_L was
measured 2-4 orders of magnitude above a typical ||g_u||, so 2 <g_L, g_u> made up 97-99% of the
picks' scores. Which one selects better is measured, not assumed (docs/quality.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from raydal.scoring.base import NonNegative, PositiveInt, Strategy, register_strategy
from raydal.scoring.grads import dynamical_scores, labeled_gradient
from raydal.scoring.grads.common import warn_once


@register_strategy
@dataclass
class DynamicAL(Strategy):
    """Options: ip_weight (default 2, the paper's; 0 is ``gradnorm``), params ("all" trainable
    parameters or "head": classifier only, an approximation), method ("fast" exact one-pass or
    "vmap" reference), gradient_reduction ("sum" as in the paper or "mean": g_L / N),
    chunk_size (samples per vmap chunk), mixed_precision (bfloat16 autocast, and the per-layer
    contractions on its bf16 tensors with float32 accumulation), tf32 (float32 contractions in
    TF32 on CUDA, as cuDNN already runs the convolutions; off by default), cuda_graph
    (capture each batch shape's scoring call as a CUDA graph and replay it: no launch and host
    overhead a call; GPU only, ignored with a warning on a CPU)."""

    name: ClassVar[str] = "dynamicAL"
    ip_weight: NonNegative = 2.0
    params: Literal["all", "head"] = "all"
    method: Literal["fast", "vmap"] = "fast"
    gradient_reduction: Literal["sum", "mean"] = "sum"
    chunk_size: PositiveInt = 32
    mixed_precision: bool = False
    cuda_graph: bool = False
    tf32: bool = False

    @property
    def needs_labeled(self) -> bool:
        """g_L enters only through the inner-product term: no labeled pass when ip_weight is 0."""
        return self.ip_weight != 0

    def prepare(self, model, labeled) -> dict[str, torch.Tensor]:
        """g_L as {parameter name: CPU tensor}: the sum (or mean) of the labeled gradients.

        labeled: iterable of (x (B, ...), y (B,)) batches, summed batch by batch.
        """
        if model is None:
            raise ValueError("dynamicAL needs a model to compute the labeled gradient")
        g_L: dict[str, torch.Tensor] = {}
        n = 0
        for x, y in labeled:
            for name, g in labeled_gradient(model, x, y, params=self.params).items():
                g_L[name] = g_L[name] + g if name in g_L else g
            n += len(x)
        if n == 0:
            raise ValueError("dynamicAL needs a non-empty labeled set")
        scale = 1.0 / n if self.gradient_reduction == "mean" else 1.0
        return {name: (g * scale).detach().cpu() for name, g in g_L.items()}

    def score(self, model, x, ids, context) -> torch.Tensor:
        """x (B, ...) -> (B,) float64 scores on the CPU; x is moved to the model's device."""
        device = next(model.parameters()).device
        graph = self.cuda_graph and device.type == "cuda" and self.method == "fast"
        if self.cuda_graph and not graph:
            warn_once("dynamicAL:cuda_graph", "dynamicAL: cuda_graph=True ignored: CUDA graphs "
                      "need method='fast' and a model on a CUDA device, got method=%r on %s",
                      self.method, device)
        scores = dynamical_scores(
            model, x.to(device), ip_weight=float(self.ip_weight), g_L=context, params=self.params,
            method=self.method, chunk_size=self.chunk_size,
            autocast_dtype=torch.bfloat16 if self.mixed_precision else None, cuda_graph=graph,
            allow_tf32=self.tf32)
        return scores.cpu()


@register_strategy
@dataclass
class GradNorm(DynamicAL):
    """||g_u||^2 alone: dynamicAL's ablation without the labeled-set term (no labels needed).
    Options as ``dynamicAL``'s; ip_weight is 0 (use ``dynamicAL`` for the inner product)."""

    name: ClassVar[str] = "gradnorm"
    ip_weight: float = 0.0

    def __post_init__(self):
        if self.ip_weight != 0:
            raise ValueError(f"ip_weight is 0 for gradnorm (||g_u||^2 alone), got "
                             f"{self.ip_weight!r}; use strategy dynamicAL for the inner-product "
                             "term")
        super().__post_init__()
