"""NTK-SAP: Neural Tangent Kernel Spectrum-Aware Pruning (Yite Wang, Dawei Li, Ruoyu Sun, ICLR 2023,
https://arxiv.org/abs/2304.02840).

NTK-SAP keeps the weights that carry the spectrum of the network's neural tangent kernel,
measured by its trace (the nuclear norm of a positive semi-definite kernel). The trace is
estimated without any Jacobian: for a small random perturbation Δ ~ N(0, I) of the
pruned weights,

    ‖f(x; θ ⊙ m) − f(x; (θ + εΔ) ⊙ m)‖²  ≈  ε² Δᵀ J(x)ᵀ J(x) Δ,

whose expectation over Δ is ε² tr Θ(x, x). The score of a weight is the magnitude of the
derivative of that estimate with respect to its mask entry, summed over R draws:

    score = | Σ_{r=1..R}  ∂/∂m  ‖f(x_r; θ_r ⊙ m) − f(x_r; (θ_r + εΔ_r) ⊙ m)‖² |   (at the current mask m)

It is data-free and weight-agnostic: every draw r uses a Gaussian input x_r of the example
input's shape and *freshly initialised weights* θ_r, so the score depends on the mask, the
architecture and the initialisation scheme, not on one particular initialisation. Pruned
in rounds on the exponential schedule (the paper: 20 rounds, R = 5, ε = 0.01).

>>> import torch, torch.nn as nn, torch.nn.utils.prune as prune
>>> import synflow_plugin
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> params = synflow_plugin.prunable_parameters(model)
>>> prune.global_unstructured(params, pruning_method=synflow_plugin.pruning_method("ntksap"),
...                           amount=0.9, model=model, example_inputs=torch.randn(2, 8), iterations=5)
>>> sum(int(m.weight_mask.sum()) for m, _ in params)
19
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings
from typing import Any

import torch
from torch import nn

from synflow_plugin.criteria.base import Criterion, ScoringState, check_seed, describe, primary_output
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["NTKSAPCriterion", "NTKSAPWarning", "gaussian_like"]


class NTKSAPWarning(UserWarning):
    """Some pruned tensors are not re-drawn between NTK-SAP's draws: no module's
    ``reset_parameters`` re-initialises them, so every draw scores them at their own values."""


def gaussian_like(example: Any, batch_size: int | None, device: torch.device | None, draw: bool = True) -> Any:
    """Standard Gaussian tensors shaped like the floating tensors of ``example`` (a tensor,
    or tensors in a tuple/list/dict), drawn from torch's (forked) global RNG; the leading
    (batch) dimension is ``batch_size`` where given. With ``draw=False`` only checks."""
    if isinstance(example, torch.Tensor):
        if not example.is_floating_point():
            raise PruningTypeError(
                f"NTK-SAP needs floating-point example_inputs, got {describe(example)}: it feeds "
                "Gaussian noise of that shape, which means nothing as token ids. Call the model on "
                "float embeddings (synflow_plugin.embeddings_as_inputs), or use a data-driven criterion."
            )
        shape = tuple(example.shape)
        if batch_size is not None:
            if not shape:
                raise PruningError(
                    f"NTK-SAP: batch_size={batch_size} needs example_inputs with a batch dimension, "
                    f"got a scalar {describe(example)}"
                )
            shape = (batch_size,) + shape[1:]
        return torch.randn(shape, dtype=example.dtype, device=device) if draw else None
    if isinstance(example, dict):
        return {k: gaussian_like(v, batch_size, device, draw) for k, v in example.items()}
    if isinstance(example, (tuple, list)):
        return type(example)(gaussian_like(v, batch_size, device, draw) for v in example)
    return example


def _positive_int(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise PruningError(f"{name}={value!r} should be a positive int ({hint})")
    return int(value)


def _batch_statistics(model: nn.Module, run) -> None:
    """Set every BatchNorm's running statistics to those of the batch ``run()`` feeds it,
    as a train-mode pass with momentum 1 does (mean, unbiased variance), but with the
    model in eval mode and without torch's one-value-per-channel refusal (a single value
    gives variance 0)."""
    counts: dict[nn.Module, float] = {}

    def hook(module, args):
        x = args[0]
        dims = [0] + list(range(2, x.dim()))
        module.running_mean.copy_(x.mean(dims))
        module.running_var.copy_(x.var(dims, unbiased=False))  # normalises as a train-mode pass does
        counts[module] = x.numel() / x.shape[1]

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.running_mean is not None and m.running_var is not None]
    if not norms:
        return
    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        for module, n in counts.items():
            if n > 1:
                module.running_var.mul_(n / (n - 1))  # what a momentum-1 train-mode pass stores


def _not_redrawn(state: ScoringState) -> list[str]:
    """The targets that the modules' ``reset_parameters()`` leave as they are: tried once
    on the scoring copy, which is then put back as it was, and with the RNG forked."""
    tensors = list(itertools.chain(state.model.parameters(), state.model.buffers()))
    device = state.device
    on_cpu = device.type == "cpu"  # then only the CPU generator is forked
    with torch.no_grad():
        saved = [t.detach().clone() for t in tensors]
        before = {id(p): s for p, s in zip(tensors, saved)}
        with torch.random.fork_rng(devices=[] if on_cpu else [device.index or 0],
                                   device_type="cuda" if on_cpu else device.type):
            for module in state.cache["ntksap_modules"]:
                module.reset_parameters()
            same = [t.qualified_name for t, p in zip(state.targets, state.params)
                    if id(p) in before and torch.equal(p, before[id(p)])]
        for tensor, value in zip(tensors, saved):
            tensor.copy_(value)
    return same


@register_criterion
class NTKSAPCriterion(Criterion):
    """Score = |Σ_r ∂/∂m ‖f(x_r; θ_r ⊙ m) − f(x_r; (θ_r + εΔ_r) ⊙ m)‖²| (NTK-SAP, Wang et al. 2023).

    Each of the ``draws`` draws of a round, on the scoring copy only:

    1. every module of the copy with a ``reset_parameters`` method is re-initialised by
       it (PyTorch's default initialisation of each layer; parameters of modules without
       one keep their values, and an :class:`NTKSAPWarning` names the pruned ones no
       ``reset_parameters`` re-draws); the pruned weights of the targets are set back to zero;
    2. x_r ~ N(0, 1), shaped like ``example_inputs`` (the batch dimension ``batch_size``
       where given), and Δ_r ~ N(0, 1) for every target;
    3. BatchNorm statistics are those of x_r through the unperturbed network (as the
       official code, which runs a train-mode pass with momentum 1), then both networks
       run in eval mode on x_r and the squared distance of their outputs (the logits:
       the first tensor of a tuple, ``"logits"`` of a dict) is differentiated with
       respect to a mask m of ones on the surviving weights, shared by both networks.

    The mask gradients of the draws are summed, then the absolute value is taken; pruned
    weights score zero (the loop's record of them, :meth:`ScoringState.alive`; one round
    of :func:`~synflow_plugin.compute_scores` counts a weight holding exactly 0 as pruned).

    Args:
        epsilon: ε, the size of the weight perturbation (paper: 0.01).
        draws: R, the draws per round (the paper's scripts: 5).
        batch_size: the Gaussian batch's size; None: the example input's.
        seed: seeds every draw (deterministic masks for a seed on a given device; the
            global RNG is left as it was); None draws from torch's global RNG.

    Differences from the official code (YiteWang/NTK-SAP, ``Pruners/pruners.py``): the
    weights are re-drawn by each layer's ``reset_parameters`` (the official code calls
    its models' own ``_initialize_weights``); the Gaussian batch has the example input's
    shape (the official one, the shape of a batch of the pruning data, ~100 images); the
    BatchNorm statistics come from hooks on an eval-mode pass, so a batch of one works.
    """

    name = "ntksap"
    summary = "NTK spectrum via mask gradients, data-free, re-drawn weights (Wang et al. 2023)"
    needs_example_inputs = True
    seeded = True
    default_iterations = 20

    def __init__(self, *, epsilon: float = 0.01, draws: int = 5, batch_size: int | None = None,
                 seed: int | None = 0) -> None:
        if (isinstance(epsilon, bool) or not isinstance(epsilon, numbers.Real) or not math.isfinite(epsilon)
                or epsilon <= 0):
            raise PruningError(f"epsilon={epsilon!r} should be a positive finite number (the paper uses 0.01)")
        self.epsilon = float(epsilon)
        self.draws = _positive_int(draws, "draws", "the paper's scripts use 5")
        self.batch_size = None if batch_size is None else _positive_int(
            batch_size, "batch_size", "or None for the example input's batch size")
        self.seed = check_seed(seed, "ntksap")

    def prepare(self, state: ScoringState) -> None:
        example = state.inputs.example_inputs
        gaussian_like(example, self.batch_size, None, draw=False)  # refuses integer inputs before any work
        if self.seed is not None:
            state.cache["ntksap_generator"] = torch.Generator().manual_seed(self.seed)
        state.cache["ntksap_modules"] = [m for m in state.model.modules()
                                         if callable(getattr(m, "reset_parameters", None))]
        state.cache["ntksap_names"] = [t.qualified_name for t in state.targets]
        kept = _not_redrawn(state)
        if kept:
            shown = ", ".join(kept[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
            warnings.warn(
                f"ntksap: {shown} {'is' if len(kept) == 1 else 'are'} not re-drawn between draws: no module's "
                "reset_parameters() re-initialises "
                f"{'it' if len(kept) == 1 else 'them'} (e.g. nn.MultiheadAttention's in_proj_weight, or a "
                f"parameter a custom layer adds), so every draw scores {'it' if len(kept) == 1 else 'them'} at "
                "the model's own values. Give the module a reset_parameters() that re-initialises it, or leave "
                "these tensors out of the prune.",
                NTKSAPWarning, stacklevel=2,
            )

    def _draw(self, state: ScoringState, alive: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
        """One draw: re-initialised weights, a Gaussian batch and a perturbation; returns
        the squared output distance as a function of ``masks``."""
        with torch.no_grad():
            for module in state.cache["ntksap_modules"]:
                module.reset_parameters()
            for p, keep in zip(state.params, alive):
                p.mul_(keep)
        x = gaussian_like(state.inputs.example_inputs, self.batch_size, state.device)
        deltas = [torch.randn_like(p) for p in state.params]
        names = state.cache["ntksap_names"]
        plain = {n: p.detach() for n, p in zip(names, state.params)}
        _batch_statistics(state.model, lambda: state.inputs.call(state.model, x, "NTK-SAP's Gaussian input"))
        masked = {n: plain[n] * m for n, m in zip(names, masks)}
        perturbed = {n: d.mul_(self.epsilon).add_(plain[n]) * m for n, d, m in zip(names, deltas, masks)}
        what = "NTK-SAP's Gaussian input"
        out = primary_output(state.inputs.call(state.model, x, what, weights=masked))
        out_perturbed = primary_output(state.inputs.call(state.model, x, what, weights=perturbed))
        return (out - out_perturbed).square().sum()

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        alive = [a.to(p.dtype) for a, p in zip(state.alive(), state.params)]
        masks = [a.clone().requires_grad_(True) for a in alive]
        totals = [torch.zeros_like(p) for p in state.params]
        generator = state.cache.get("ntksap_generator")
        device = state.device
        for _ in range(self.draws):
            if generator is None:
                distance = self._draw(state, alive, masks)
            else:
                seed = int(torch.randint(0, 2**62, (), generator=generator))
                devices = [device.index if device.index is not None else torch.cuda.current_device()] \
                    if device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(seed)
                    distance = self._draw(state, alive, masks)
            grads = torch.autograd.grad(distance, masks, allow_unused=True)
            for total, g in zip(totals, grads):
                if g is not None:
                    total.add_(g)
        return [(t * a).abs() for t, a in zip(totals, alive)]
