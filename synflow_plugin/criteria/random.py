"""Random: Gaussian scores, i.e. a uniformly random mask (the paper's baseline).

Ranked globally (the default scope) every layer keeps about the same fraction;
``scope="local"`` makes that exact per layer, ``scope="erk"`` gives the
Erdős–Rényi-Kernel layer densities of Evci et al. (RigL, 2020).
"""

from __future__ import annotations

import torch

from synflow_plugin.criteria.base import Criterion, ScoringState, check_seed
from synflow_plugin.criteria.registry import register_criterion

__all__ = ["RandomCriterion"]


@register_criterion
class RandomCriterion(Criterion):
    """Score ~ N(0, 1), independently per weight.

    Args:
        seed: seed of a private generator, so the mask is reproducible and the global
            RNG is left alone; ``None`` draws from torch's global RNG.
    """

    name = "random"
    reads_network = False
    summary = "Gaussian scores: a uniformly random mask (baseline)"
    seeded = True

    def __init__(self, *, seed: int | None = None) -> None:
        self.seed = check_seed(seed, "random")

    def prepare(self, state: ScoringState) -> None:
        if self.seed is not None:
            state.cache["generator"] = torch.Generator().manual_seed(self.seed)

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        generator = state.cache.get("generator")
        # Drawn on the CPU so that a seed gives the same mask on every device.
        return [torch.randn(p.shape, generator=generator).to(p.device) for p in state.params]
