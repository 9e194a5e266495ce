"""Rules for timm's own layers, registered once timm is imported (raydal imports timm lazily).

timm's norm+act modules apply dropout and the activation inside: their norm's output is the
input of their ``drop`` child."""
from __future__ import annotations

from timm import layers

from raydal.scoring.grads.linear import linear_project, linear_terms
from raydal.scoring.grads.norm import _has_running_stats, batchnorm_terms, groupnorm_terms, \
    layernorm_terms
from raydal.scoring.grads.registry import register_rule

# subclasses that override forward with the same maths
register_rule(layers.Linear, project=linear_project)(linear_terms)
register_rule(layers.LayerNorm)(layernorm_terms)
register_rule(layers.BatchNormAct2d, tap="drop", applies=_has_running_stats)(batchnorm_terms)
register_rule(layers.GroupNormAct, layers.GroupNorm1Act, tap="drop")(groupnorm_terms)
register_rule(layers.LayerNormAct, tap="drop")(layernorm_terms)
