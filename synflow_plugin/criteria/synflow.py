"""SynFlow: Iterative Synaptic Flow Pruning (Tanaka et al., NeurIPS 2020,
https://arxiv.org/abs/2006.05467, Algorithm 1).

Every parameter and buffer is replaced by its absolute value, an all-ones input
is fed, and R = 1ᵀ(∏ₗ|θˡ|)1 is the sum of the outputs. A weight's score is its
synaptic flow |θ ⊙ ∂R/∂θ|. No data is needed. Pruned in ~100 rounds on an
exponential schedule, the scores of a layer re-balance as it thins, which is
what keeps SynFlow from collapsing layers.

SynFlow-L2 (``power=2``; the squared-weight path norm of Gebhart et al., "A Unified
Paths Perspective for Pruning at Initialization", https://arxiv.org/abs/2101.10552,
named SynFlow-L2 in PHEW, https://arxiv.org/abs/2010.11354) replaces every parameter
and buffer by its square instead: R₂ = 1ᵀ(∏ₗ(θˡ)²)1 and the score is
θ² ⊙ ∂R₂/∂(θ²), which is ½|θ ⊙ ∂R₂/∂θ| and, like SynFlow's, sums to R₂ in every
layer of a bias-free ReLU network.
"""

from __future__ import annotations

import itertools
import math
import warnings

import torch
from torch import nn

from synflow_plugin.criteria.base import GradientCriterion, ScoringState, describe, flow_outputs
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["SynFlowCriterion"]

_BATCHNORM_MODES = ("eval", "identity")
_POWERS = (1, 2)


def _all_ones(example_inputs, dtype: torch.dtype | None, device: torch.device):
    """An all-ones input shaped like ``example_inputs`` (tensors inside tuples/dicts too),
    in ``dtype``, or in each tensor's own floating dtype when ``dtype`` is None."""
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
        return torch.ones(example_inputs.shape, dtype=dtype or example_inputs.dtype, device=device)
    if isinstance(example_inputs, dict):
        return {k: _all_ones(v, dtype, device) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(_all_ones(v, dtype, device) for v in example_inputs)
    return example_inputs


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v)]
    return []


def _in_range(value: float, dtype: torch.dtype) -> bool:
    """Whether the flow R is finite and well inside ``dtype``'s normal range: 2^16 away
    from both ends (2^3 for float16, whose whole range is 2^30)."""
    info = torch.finfo(dtype)
    margin = 2.0 ** min(16, math.log2(info.max) // 4)
    return math.isfinite(value) and info.tiny * margin < abs(value) < info.max / margin


@register_criterion
class SynFlowCriterion(GradientCriterion):
    """Score = |θ ⊙ ∂R/∂θ| on the linearised network (|θ| everywhere, all-ones input).

    Args:
        batchnorm: ``"eval"`` (the paper: BatchNorm uses its running statistics,
            with |weight|, |bias|, |running_mean|) or ``"identity"`` (BatchNorm is
            skipped while scoring; use it when a zero-initialised BatchNorm weight,
            as in ``zero_init_residual``, blocks all flow through a branch).
        power: 1 (SynFlow: |θ| everywhere) or 2 (SynFlow-L2: θ² everywhere, the
            score θ² ⊙ ∂R₂/∂(θ²)). SynFlow-L2 scores on a float64 copy from the
            start: a square is not exact in float32, and the masks should be those
            of float64.

    Precision: R grows or shrinks geometrically with depth (about 18^depth for a
    width-256 ReLU MLP at Kaiming initialisation) and leaves float32's range past
    ~30 layers; one tiny layer sends the gradients of the others to infinity. Every
    round checks R and, in the pruning loop, every ranked score; a round where either
    leaves the model's dtype's normal range is scored again, and every later round
    too, on a float64 copy, so that the masks are those of float64. The all-ones input
    takes the model's dtype when all its floating tensors share one, else each example
    tensor's own.
    """

    name = "synflow"
    summary = "iterative synaptic flow, data-free (Tanaka et al. 2020)"
    needs_example_inputs = True
    default_iterations = 100
    times_weight = True  # score() gives ∂R/∂θ; the score is |θ ⊙ ∂R/∂θ|
    ranks_magnitude = True
    wide_range = True
    #: 1: |θ| (SynFlow), 2: θ² (SynFlow-L2); set on an instance only when not 1.
    power: int = 1

    def __init__(self, *, batchnorm: str = "eval", power: int = 1) -> None:
        if batchnorm not in _BATCHNORM_MODES:
            raise PruningError(f"batchnorm={batchnorm!r} is not valid; expected one of {_BATCHNORM_MODES}")
        if isinstance(power, bool) or power not in _POWERS:
            raise PruningError(
                f"power={power!r} is not valid; expected one of {_POWERS} (1: SynFlow on |θ|, 2: SynFlow-L2 on θ²)"
            )
        self.batchnorm = batchnorm
        if power != 1:
            self.power = int(power)

    def prepare(self, state: ScoringState) -> None:
        # example_inputs is there: the request checks it for needs_example_inputs.
        example = state.inputs.example_inputs
        empty = [describe(t) for t in _tensors(example) if t.numel() == 0]
        if empty:
            raise PruningError(
                f"SynFlow's example_inputs hold an empty tensor ({empty[0]}): the flow of an empty "
                "batch is zero. Pass a batch of at least one input, e.g. torch.randn(1, 3, 32, 32)."
            )
        _all_ones(example, None, state.device)  # refuses integer inputs before any work
        if self.batchnorm == "identity":
            _replace_batchnorm(state.model)
        if self.power == 2:
            state.promote()  # squares are exact in float64 only
        with torch.no_grad():
            for tensor in itertools.chain(state.model.parameters(), state.model.buffers()):
                if tensor.is_floating_point():
                    if self.power == 2:
                        tensor.square_()
                    else:
                        tensor.abs_()

    def _total_flow(self, state: ScoringState) -> torch.Tensor:
        dtype = state.model_dtype
        key = ("ones", dtype)
        if key not in state.cache:
            state.cache[key] = _all_ones(state.inputs.example_inputs, dtype, state.device)
        try:
            output = state.inputs.call(state.model, state.cache[key], "SynFlow's all-ones input")
        except PruningError as exc:
            if state.promoted_from is None:
                raise
            raise PruningError(
                f"the synaptic flow leaves the range of {state.promoted_from}, so SynFlow scores "
                f"in float64, but the model does not run in float64 ({exc}). Remove the "
                "dtype casts from its forward, or pass a float64 copy of the model."
            ) from exc
        tensors = flow_outputs(output)
        if not tensors:
            raise PruningError(
                f"SynFlow sums the model's floating-point outputs, but it returned {describe(output)}."
            )
        return sum(t.sum() for t in tensors)

    def objective(self, state: ScoringState) -> torch.Tensor:
        """The flow R, whose gradient ∂R/∂θ is the round's score (the loop forms
        |θ ⊙ ∂R/∂θ| for the surviving weights only)."""
        flow = self._total_flow(state)
        if not _in_range(float(flow.detach()), flow.dtype) and state.promote():
            flow = self._total_flow(state)
        value = float(flow.detach())
        if not _in_range(value, flow.dtype):
            if not math.isfinite(value):
                raise PruningError(
                    f"the synaptic flow R = {value:.3g} is outside the range of {flow.dtype}: the "
                    "network is too deep for SynFlow's all-ones input at this initialisation."
                )
            if value == 0 and state.round == 0:
                raise PruningError(_no_flow_reason(state))
            # R == 0 in a later round: the pruning itself has disconnected the network;
            # every score is zero and the loop prunes by position (and reports the collapse).
        return flow


def _no_flow_reason(state: ScoringState) -> str:
    """Why the flow R of the scoring copy is zero before any round, as an error message."""
    empty = [f"'{t.qualified_name}'" for t, p in zip(state.targets, state.params) if not p.detach().any()]
    if empty:
        return (
            f"the synaptic flow of the network is zero: {', '.join(empty)} "
            f"{'has' if len(empty) == 1 else 'have'} no weight left (pruned before this call), so no "
            "path from the input reaches the output. Prune a network whose layers all keep weights."
        )
    zero = [f"'{name}'" for name, m in state.model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None and not m.weight.any()]
    if zero:
        return (
            f"the synaptic flow of the network is zero: the BatchNorm weights of {', '.join(zero)} are "
            "all zero (e.g. zero_init_residual). Pass batchnorm='identity' to score as if BatchNorm "
            "were identity."
        )
    zero = [f"'{name}'" for name, p in state.model.named_parameters() if p.numel() and not p.detach().any()]
    return (
        "the synaptic flow of the network is zero: no path from the input reaches the output"
        + (f" ({', '.join(zero)} {'is' if len(zero) == 1 else 'are'} all zero)." if zero else ".")
    )


def _replace_batchnorm(model: nn.Module) -> None:
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, child_name, nn.Identity())
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        warnings.warn("the model itself is a BatchNorm layer; batchnorm='identity' leaves it as is")
