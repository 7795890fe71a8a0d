"""The sanity checks of Frankle et al. for pruning at initialisation.

Frankle, Dziugaite, Roy and Carbin, "Pruning Neural Networks at Initialization: Why
are We Missing the Mark?" (ICLR 2021, https://arxiv.org/abs/2009.08576) ask whether a
pruning-at-initialisation method finds *which* weights matter or only *how many* to
keep per layer. Three ablations answer it; if accuracy after training does not drop,
the method's per-weight choices carried no information:

* **layer-wise mask shuffling** (:func:`shuffle_masks`, :func:`shuffle_masks_`): each
  layer's mask is permuted at random, keeping its density;
* **weight re-initialisation** (:func:`reinitialize_`): the surviving weights are
  drawn afresh from the initial distribution, keeping the masks;
* **score inversion** (:class:`InvertedCriterion`, :func:`inverted`): the weights
  with the *lowest* scores are kept.

Two bugs of the published SynFlow code (https://github.com/ganguli-lab/Synaptic-Flow,
``Pruners/pruners.py``) are avoided here, and the tests pin both down:

* its ``shuffle`` rebinds a local name (``mask = mask.reshape(-1)[perm]...``) and so
  leaves every mask unchanged: the check is a no-op;
* its ``invert`` divides each score by its square (``v.div_(v**2)``), which is 0/0 =
  NaN for every zero score (every weight pruned in an earlier round, and SynFlow's
  dead neurons) and keeps the order of negative scores (GraSP). Here the inverted
  score is ``-score``: an exact reversal of the ranking, with no division.

>>> import torch, torch.nn as nn
>>> from synflow_plugin import compute_masks, prunable_parameters
>>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
>>> params = prunable_parameters(model)
>>> masks = compute_masks(model, params, "magnitude", 0.5)
>>> low = compute_masks(model, params, inverted("magnitude"), 0.5)
>>> bool((masks[0] & low[0]).any()), int(low[0].sum()) + int(low[1].sum())
(False, 40)
>>> shuffled = shuffle_masks(masks, seed=0)
>>> [int(m.sum()) for m in shuffled] == [int(m.sum()) for m in masks]
True
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from synflow_plugin.criteria import Criterion, ScoringState, get_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.targets import group_by_tensor, held_tensor, prunable_parameters

__all__ = [
    # score inversion
    "InvertedCriterion",
    "inverted",
    # mask shuffling
    "shuffle_masks",
    "shuffle_masks_",
    # re-initialisation
    "reinitialize_",
    # all at once
    "SANITY_CHECKS",
]

#: The names the CLI and the demo use for the three checks.
SANITY_CHECKS = ("shuffle", "reinit", "invert")


# --------------------------------------------------------------------------- inversion
class InvertedCriterion(Criterion):
    """Another criterion with its ranking reversed: score = ``-score``.

    Keeping the largest ``-score`` keeps the weights the wrapped criterion would prune
    first. Used inside the iterative loop, every round is inverted (weights pruned in
    earlier rounds are never re-ranked, so their zero scores play no part).

    Args:
        base: the criterion to invert (an instance, e.g. ``get_criterion("synflow")``).

    >>> InvertedCriterion(get_criterion("snip")).needs_data
    True
    """

    def __init__(self, base: Criterion) -> None:
        if not isinstance(base, Criterion):
            raise PruningTypeError(
                f"InvertedCriterion() expects a Criterion instance, got {type(base).__name__}; "
                "use inverted('synflow') to start from a name"
            )
        if isinstance(base, InvertedCriterion):
            raise PruningError("InvertedCriterion(): inverting an inverted criterion gives the original back; pass it")
        self.base = base
        # Class attributes of the contract, set per instance from the wrapped criterion.
        self.name = f"inverted-{base.name}"
        self.summary = f"the lowest-scoring weights of {base.name} kept (sanity check)"
        self.needs_data = base.needs_data
        self.needs_example_inputs = base.needs_example_inputs
        self.seeded = base.seeded
        self.reads_network = base.reads_network
        self.default_iterations = base.default_iterations
        self.revives = base.revives
        self.wide_range = base.wide_range

    def prepare(self, state: ScoringState) -> None:
        self.base.prepare(state)

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        return [torch.neg(s) for s in self.base.finish(state, self.base.score(state))]

    def __repr__(self) -> str:
        return f"InvertedCriterion({self.base!r})"


def inverted(criterion: str | Criterion, **options: Any) -> InvertedCriterion:
    """``criterion`` (a registry name with its options, or an instance) with its ranking reversed.

    >>> inverted("synflow", batchnorm="identity")
    InvertedCriterion(SynFlowCriterion(batchnorm='identity'))
    """
    return InvertedCriterion(get_criterion(criterion, **options))


# --------------------------------------------------------------------------- shuffling
def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PruningError(f"seed={seed!r} should be a non-negative int or None")
    return torch.Generator().manual_seed(seed)


def shuffle_masks(masks: Sequence[torch.Tensor], *, seed: int | None = None) -> list[torch.Tensor]:
    """Each mask's entries permuted at random within its own tensor (new tensors).

    The number of kept weights per layer is unchanged; which weights are kept is not.
    Permutations are drawn on the CPU, so a seed gives the same result on every device.

    Args:
        masks: one mask per layer (bool or 0/1 floats), e.g. from :func:`~synflow_plugin.compute_masks`.
        seed: seed of a private generator; ``None`` uses torch's global RNG.

    Returns:
        New masks of the same shapes, dtypes and devices.
    """
    generator = _generator(seed)
    out = []
    for mask in masks:
        if not isinstance(mask, torch.Tensor):
            raise PruningTypeError(f"shuffle_masks(): expected tensors, got {type(mask).__name__}")
        perm = torch.randperm(mask.numel(), generator=generator).to(mask.device)
        out.append(mask.reshape(-1)[perm].reshape(mask.shape).clone())
    return out


def _pruned_pairs(model: nn.Module, params: Iterable[tuple[nn.Module, str]] | None, caller: str):
    pairs = list(prunable_parameters(model) if params is None else params)
    pruned = [(m, n) for m, n in pairs if f"{n}_mask" in m._buffers and f"{n}_orig" in m._parameters]
    if not pruned:
        raise PruningError(
            f"{caller}: no tensor of the model is pruned by torch.nn.utils.prune; prune it first, "
            "e.g. prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow, ...)"
        )
    return pruned


def shuffle_masks_(
    model: nn.Module, params: Iterable[tuple[nn.Module, str]] | None = None, *, seed: int | None = None
) -> nn.Module:
    """Shuffle, in place, the ``torch.nn.utils.prune`` mask of every pruned tensor of ``model``.

    The mask buffers themselves are overwritten (the published SynFlow code assigned
    the permuted mask to a local variable, so nothing changed), and the masked
    weights are recomputed, so the model is consistent before its next forward.

    Args:
        model: a model pruned with ``torch.nn.utils.prune`` (e.g. by :class:`~synflow_plugin.SynFlow`).
        params: the ``(module, name)`` pairs to shuffle; default: every pruned conv/linear weight.
        seed: seed of the permutations.

    Returns:
        ``model``.
    """
    pairs = _pruned_pairs(model, params, "shuffle_masks_()")
    tied = group_by_tensor(pairs)  # the uses of a tied weight keep one mask
    masks = [[m._buffers[f"{n}_mask"] for m, n in uses] for uses in tied]
    with torch.no_grad():
        for olds, new in zip(masks, shuffle_masks([uses[0] for uses in masks], seed=seed)):
            for old in olds:
                old.copy_(new)
    _refresh(pairs)
    return model


def _refresh(pairs) -> None:
    """Recompute ``weight = weight_orig * weight_mask`` as prune's forward pre-hook does."""
    for module, name in pairs:
        if f"{name}_orig" in module._parameters and f"{name}_mask" in module._buffers:
            setattr(module, name, module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"])


# --------------------------------------------------------------------------- re-initialisation
def _kaiming_normal(tensor: torch.Tensor, generator: torch.Generator | None) -> None:
    fan_in = tensor[0].numel() if tensor.dim() > 1 else tensor.numel()
    std = (2.0 / fan_in) ** 0.5  # kaiming normal, fan_in, ReLU: the zoo's initialisation
    tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype).to(tensor.device) * std)


def reinitialize_(
    model: nn.Module,
    params: Iterable[tuple[nn.Module, str]] | None = None,
    *,
    seed: int | None = None,
    init: Callable[[torch.Tensor], Any] | None = None,
) -> nn.Module:
    """Draw the pruned tensors of ``model`` afresh, in place, keeping their masks.

    Args:
        model: the (pruned) model; masks of ``torch.nn.utils.prune`` are kept, the
            values under them (``weight_orig``) are replaced. An unpruned tensor is
            simply re-drawn.
        params: the ``(module, name)`` pairs to re-draw; default: every conv/linear weight.
        seed: seed of a private generator for the default initialisation.
        init: ``init(tensor)`` filling a tensor in place; default: kaiming-normal
            (fan_in, ReLU), the initialisation of the paper and of the model zoo.
            With a custom ``init`` seed the global RNG yourself.

    Returns:
        ``model``.
    """
    if init is not None and not callable(init):
        raise PruningTypeError(f"reinitialize_(): init should be callable as init(tensor), got {type(init).__name__}")
    generator = _generator(seed)
    pairs = list(prunable_parameters(model) if params is None else params)
    if not pairs:
        raise PruningError("reinitialize_(): the model has no conv or linear weight to re-initialise")
    with torch.no_grad():
        for module, name in (uses[0] for uses in group_by_tensor(pairs)):  # a tied weight is drawn once
            tensor = held_tensor(module, name)
            if tensor is None:
                raise PruningError(f"reinitialize_(): {type(module).__name__} has no parameter '{name}'")
            if init is None:
                _kaiming_normal(tensor, generator)
            else:
                init(tensor)
    _refresh(pairs)
    return model
