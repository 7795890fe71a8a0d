"""SNIP and its iterative forms, IterSNIP and FORCE.

SNIP (Lee et al., ICLR 2019, https://arxiv.org/abs/1810.02340) keeps the weights
whose removal changes the loss most: |∂L/∂m| = |g ⊙ θ| for a mask m of ones.
IterSNIP and FORCE (de Jorge et al., ICLR 2021, https://arxiv.org/abs/2006.09081)
repeat it on the exponential schedule; FORCE scores every weight of the call with
its initial value, |θ₀ ⊙ ∂L/∂(θ ⊙ m)|, so a weight pruned in an early round can
come back, while IterSNIP only ranks the survivors.
"""

from __future__ import annotations

import torch

from synflow_plugin.criteria.base import Criterion, ScoringState, to_device
from synflow_plugin.criteria.registry import register_criterion

__all__ = ["SNIPCriterion", "IterSNIPCriterion", "FORCECriterion", "loss_gradients"]


def loss_gradients(state: ScoringState, name: str, temperature: float = 1.0,
                   create_graph: bool = False) -> list[torch.Tensor]:
    """∂L/∂θ for every target, L summed over the batches of ``state.inputs`` (and of
    every rank of the call's process group)."""
    totals = [torch.zeros_like(p) for p in state.params]
    for inputs, labels in state.inputs.batches(name):
        inputs, labels = to_device(inputs, state.device), to_device(labels, state.device)
        output = state.inputs.call(state.model, inputs, "a batch of data")
        loss = state.inputs.loss(output, labels, temperature)
        grads = torch.autograd.grad(loss, state.params, allow_unused=True, create_graph=create_graph)
        for total, grad in zip(totals, grads):
            if grad is not None:
                total.add_(grad)
    return state.all_reduce(totals)


@register_criterion
class SNIPCriterion(Criterion):
    """Score = |θ ⊙ ∂L/∂θ| summed over the given batches. Data-driven, one shot."""

    name = "snip"
    summary = "|w * dL/dw| on a batch (Lee et al. 2019)"
    needs_data = True
    reduces_across_ranks = True

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        grads = loss_gradients(state, self.name)
        return [(p.detach() * g).abs() for p, g in zip(state.params, grads)]


@register_criterion
class IterSNIPCriterion(SNIPCriterion):
    """SNIP re-scored in each round of the exponential schedule; pruned weights stay pruned."""

    name = "itersnip"
    summary = "SNIP re-scored every round (de Jorge et al. 2021)"
    default_iterations = 10


@register_criterion
class FORCECriterion(SNIPCriterion):
    """FORCE: |θ₀ ⊙ ∂L/∂(θ ⊙ m)| for every weight of the call, pruned ones included,
    so a weight removed in an earlier round may return in a later one."""

    name = "force"
    summary = "iterative SNIP, pruned weights may return (de Jorge et al. 2021)"
    default_iterations = 10
    revives = True

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        grads = loss_gradients(state, self.name)
        return [(theta0 * g).abs() for theta0, g in zip(state.initial, grads)]
