"""Baselines: random, entropy, margin, least-confidence. Higher score = picked first."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from raydal.scoring.base import PositiveInt, Strategy, register_strategy


@torch.no_grad()
def predict_proba(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax probabilities (B, C) in float64, model in eval mode."""
    model.eval()
    out = [torch.softmax(model(x[s:s + batch_size]).double(), dim=1)
           for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def entropy(p: torch.Tensor) -> torch.Tensor:
    """(B, C) probabilities -> (B,) Shannon entropy in nats (0 log 0 = 0)."""
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)


def margin(p: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B,) negated gap between the two most probable classes (small gap = high)."""
    top2 = p.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


def least_confidence(p: torch.Tensor) -> torch.Tensor:
    """(B, C) -> (B,) 1 - max probability."""
    return 1.0 - p.max(dim=1).values


def hash_uniform(ids: list[str], seed: int) -> torch.Tensor:
    """Deterministic uniform [0, 1) value per id, independent of batching: (B,) float64."""
    vals = [int.from_bytes(hashlib.blake2b(f"{seed}\x00{i}".encode(), digest_size=8).digest(),
                           "big") for i in ids]
    return torch.from_numpy(np.asarray(vals, dtype=np.uint64) >> np.uint64(11)).double() / 2.0**53


@register_strategy
@dataclass
class Random(Strategy):
    """Uniform random picks; a seeded hash of the id so any sharding picks the same set."""

    name = "random"
    needs_model = False
    seed: int = 0

    def score(self, model, x, ids, context):
        return hash_uniform(ids, self.seed)


@dataclass
class _ProbabilityStrategy(Strategy):
    batch_size: PositiveInt = 256

    def score(self, model, x, ids, context):
        return self.from_proba(predict_proba(model, x, self.batch_size)).cpu()

    def score_with_classes(self, model, x, ids, context):
        """Scores and classes from one forward pass: the argmax of the same softmax (softmax
        keeps the logits' order, so these are ``predicted_classes``' classes)."""
        p = predict_proba(model, x, self.batch_size)
        return self.from_proba(p).cpu(), p.argmax(dim=1).cpu().to(torch.int64)


@register_strategy
@dataclass
class Entropy(_ProbabilityStrategy):
    name = "entropy"
    from_proba = staticmethod(entropy)


@register_strategy
@dataclass
class Margin(_ProbabilityStrategy):
    name = "margin"
    from_proba = staticmethod(margin)


@register_strategy
@dataclass
class LeastConfidence(_ProbabilityStrategy):
    name = "least_confidence"
    from_proba = staticmethod(least_confidence)
