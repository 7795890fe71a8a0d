"""SynFlow: Iterative Synaptic Flow Pruning (Tanaka et al., NeurIPS 2020,
https://arxiv.org/abs/2006.05467, Algorithm 1).

Every parameter and buffer is replaced by its absolute value, an all-ones input
is fed, and R = 1ᵀ(∏ₗ|θˡ|)1 is the sum of the outputs. A weight's score is its
synaptic flow |θ ⊙ ∂R/∂θ|. No data is needed. Pruned in ~100 rounds on an
exponential schedule, the scores of a layer re-balance as it thins, which is
what keeps SynFlow from collapsing layers.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from synflow_plugin.criteria.base import Criterion, ScoringState, describe, flow_outputs
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["SynFlowCriterion"]

_BATCHNORM_MODES = ("eval", "identity")


def _all_ones(example_inputs, dtype: torch.dtype, device: torch.device):
    """An all-ones input shaped like ``example_inputs`` (tensors inside tuples/dicts too)."""
    if isinstance(example_inputs, torch.Tensor):
        if not (example_inputs.is_floating_point() or example_inputs.is_complex()):
            raise PruningTypeError(
                f"SynFlow needs floating-point example_inputs, got {describe(example_inputs)}. "
                "SynFlow replaces the input by ones to measure the flow through the linearised "
                "network; integer inputs such as token ids index an embedding instead of "
                "flowing through weights, so 'all ones' means nothing for them. Prune the "
                "layers behind the embedding by calling the model on float embeddings "
                "(e.g. a wrapper taking inputs_embeds), or use a data-driven criterion (SNIP)."
            )
        return torch.ones(example_inputs.shape, dtype=dtype, device=device)
    if isinstance(example_inputs, dict):
        return {k: _all_ones(v, dtype, device) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(_all_ones(v, dtype, device) for v in example_inputs)
    return example_inputs


class SynFlowCriterion(Criterion):
    """Score = |θ ⊙ ∂R/∂θ| on the linearised network (|θ| everywhere, all-ones input).

    Args:
        batchnorm: ``"eval"`` (the paper: BatchNorm uses its running statistics,
            with |weight|, |bias|, |running_mean|) or ``"identity"`` (BatchNorm is
            skipped while scoring; use it when a zero-initialised BatchNorm weight,
            as in ``zero_init_residual``, blocks all flow through a branch).

    Precision: R grows geometrically with depth (about 18^depth for a width-256
    ReLU MLP at Kaiming initialisation) and overflows float32 past ~30 layers. The
    flow is computed in the model's dtype when R stays well inside its range, and
    in float64 otherwise; the masks are the same up to ties.
    """

    name = "synflow"
    default_iterations = 100
    times_weight = True  # score() gives ∂R/∂θ; the score is |θ ⊙ ∂R/∂θ|
    ranks_magnitude = True

    def __init__(self, *, batchnorm: str = "eval") -> None:
        if batchnorm not in _BATCHNORM_MODES:
            raise PruningError(f"batchnorm={batchnorm!r} is not valid; expected one of {_BATCHNORM_MODES}")
        self.batchnorm = batchnorm

    def prepare(self, state: ScoringState) -> None:
        model = state.model
        if state.inputs.example_inputs is None:
            raise PruningError(
                "SynFlow needs example_inputs=<a tensor shaped like one input batch, e.g. "
                "torch.randn(1, 3, 32, 32)>: only its shape is used, SynFlow feeds ones."
            )
        if self.batchnorm == "identity":
            _replace_batchnorm(model)
        with torch.no_grad():
            for tensor in list(model.parameters()) + list(model.buffers()):
                if tensor.is_floating_point():
                    tensor.abs_()

        dtype = state.params[0].dtype
        flow = self._flow(state, dtype)
        if not _well_inside(flow, dtype):
            # Recompute in float64: the network is too deep for the model's dtype.
            model.to(torch.float64)
            flow = self._flow(state, torch.float64)
            if not _well_inside(flow, torch.float64):
                raise PruningError(
                    f"the synaptic flow R = {flow:.3g} is outside the range of float64: the "
                    "network is too deep for SynFlow's all-ones input at this initialisation."
                )

    def _flow(self, state: ScoringState, dtype: torch.dtype) -> float:
        state.cache["ones"] = _all_ones(state.inputs.example_inputs, dtype, state.device)
        with torch.no_grad():
            return float(self._total_flow(state))

    def _total_flow(self, state: ScoringState) -> torch.Tensor:
        output = state.inputs.call(state.model, state.cache["ones"], "SynFlow's all-ones input")
        tensors = flow_outputs(output)
        if not tensors:
            raise PruningError(
                f"SynFlow sums the model's floating-point outputs, but it returned {describe(output)}."
            )
        return sum(t.sum() for t in tensors)

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        flow = self._total_flow(state)
        grads = torch.autograd.grad(flow, state.params, allow_unused=True)
        # ∂R/∂θ: the loop forms |θ ⊙ ∂R/∂θ| for the surviving weights only.
        return [torch.zeros_like(p) if g is None else g for p, g in zip(state.params, grads)]


def _well_inside(value: float, dtype: torch.dtype) -> bool:
    info = torch.finfo(dtype)
    margin = 2.0 ** 16
    return value == value and info.tiny * margin < abs(value) < info.max / margin


def _replace_batchnorm(model: nn.Module) -> None:
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, nn.Identity())
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        warnings.warn("the model itself is a BatchNorm layer; batchnorm='identity' leaves it as is")
