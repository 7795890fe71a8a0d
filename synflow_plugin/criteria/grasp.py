"""GraSP: Gradient Signal Preservation (Wang et al., ICLR 2020, https://arxiv.org/abs/2002.07376).

Sign convention. GraSP defines S(−θ) = −θ ⊙ Hg (H the Hessian of the loss, g its
gradient) and removes the weights with the *largest* S. Every criterion here keeps
the *largest* score, so the score returned is θ ⊙ Hg = −S(−θ): the same masks
as the paper, one convention for all criteria. Scores may be negative.
"""

from __future__ import annotations

import math
import numbers

import torch

from synflow_plugin.criteria.base import Criterion, ScoringState, to_device
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.criteria.snip import loss_gradients
from synflow_plugin.errors import PruningError

__all__ = ["GraSPCriterion"]


@register_criterion
class GraSPCriterion(Criterion):
    """Score = θ ⊙ Hg, with g and Hg of the loss on logits / ``temperature``.

    Hg is a Hessian-vector product by double back-propagation: the gradient, with its
    graph, dotted with the (stopped) gradient g and differentiated again.

    Args:
        temperature: divides the logits (the paper uses T = 200, which keeps the
            softmax from saturating at initialisation).
    """

    name = "grasp"
    summary = "gradient signal preservation, w * Hg (Wang et al. 2020)"
    needs_data = True
    reduces_across_ranks = True

    def __init__(self, *, temperature: float = 200.0) -> None:
        if (not isinstance(temperature, numbers.Real) or isinstance(temperature, bool)
                or not math.isfinite(temperature) or temperature <= 0):
            raise PruningError(f"temperature={temperature!r} should be a positive finite number (the paper uses 200)")
        self.temperature = float(temperature)

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        stopped = [g.detach() for g in loss_gradients(state, self.name, self.temperature)]
        hessian_g = [torch.zeros_like(p) for p in state.params]
        for inputs, labels in state.inputs.batches(self.name):
            inputs, labels = to_device(inputs, state.device), to_device(labels, state.device)
            output = state.inputs.call(state.model, inputs, "a batch of data")
            loss = state.inputs.loss(output, labels, self.temperature)
            grads = torch.autograd.grad(loss, state.params, allow_unused=True, create_graph=True)
            z = sum((g * s).sum() for g, s in zip(grads, stopped) if g is not None and g.requires_grad)
            if not isinstance(z, torch.Tensor):  # the loss is linear in every target
                continue
            for total, hg in zip(hessian_g, torch.autograd.grad(z, state.params, allow_unused=True)):
                if hg is not None:
                    total.add_(hg)
        state.all_reduce(hessian_g)
        return [p.detach() * hg for p, hg in zip(state.params, hessian_g)]
