"""Parameter selection and model state shared by the exact paths."""
from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn

log = logging.getLogger("raydal")
_warned: set[str] = set()


def select_params(model: nn.Module, params: str) -> dict[str, nn.Parameter]:
    """{name: parameter} scored: "all" trainable parameters or "head" (the classifier)."""
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


def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside; the modules that were training are set back afterwards."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


def autocast(x: torch.Tensor, dtype: torch.dtype | None, cache: bool = True):
    """cache=False inside a CUDA graph capture (autocast's weight-cast cache would hold tensors
    the graph's memory pool reuses)."""
    return torch.autocast(x.device.type, dtype=dtype, cache_enabled=cache) if dtype is not None \
        else contextlib.nullcontext()


def warn_once(key: str, message: str, *args) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)
