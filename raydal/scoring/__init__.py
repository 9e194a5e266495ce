"""Scoring strategies (pure torch) and their registry."""
from raydal.scoring.base import Strategy, create_strategy, list_strategies, register_strategy
from raydal.scoring import batch_dynamical, diversity, dynamical, uncertainty  # noqa: F401  (registers them)
from raydal.scoring.grads import dynamical_scores, labeled_gradient

__all__ = ["Strategy", "create_strategy", "list_strategies", "register_strategy",
           "dynamical_scores", "labeled_gradient"]
