"""Magnitude: keep the largest weights, |θ| (the classic baseline; Han et al. 2015)."""

from __future__ import annotations

import torch

from synflow_plugin.criteria.base import Criterion, ScoringState
from synflow_plugin.criteria.registry import register_criterion

__all__ = ["MagnitudeCriterion"]


@register_criterion
class MagnitudeCriterion(Criterion):
    """Score = |θ|. Data-free, one shot. Ranked globally it is known to collapse the
    widest layers first (SynFlow paper, Fig. 1)."""

    name = "magnitude"
    reads_network = False
    summary = "keep the largest |w| (baseline)"

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        return [p.detach().abs() for p in state.params]
