"""What a pruned network looks like: per-layer densities, layer collapse, critical compression.

Layer collapse (SynFlow paper, Sec. 3): a layer whose weights are all pruned cuts
every path from input to output, so the network can no longer learn. The critical
compression of a criterion is the largest compression it reaches without collapsing
a layer; the paper reports it as log10 (VGG-16-BN, CIFAR-100: magnitude 2.75,
random 3.33, SNIP 3.58, GraSP 3.58, SynFlow 5.92).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.masking import compute_masks
from synflow_plugin.targets import group_by_tensor, held_tensor, prunable_parameters

__all__ = [
    "LayerStats",
    "layer_report",
    "format_report",
    "collapsed_layers",
    "CollapseResult",
    "critical_compression",
    "conservation_gap",
]


@dataclass(frozen=True)
class LayerStats:
    """One pruned tensor: ``remaining`` of ``size`` weights survive."""

    name: str
    shape: tuple[int, ...]
    size: int
    remaining: int

    @property
    def density(self) -> float:
        return self.remaining / self.size if self.size else 0.0

    @property
    def collapsed(self) -> bool:
        return self.size > 0 and self.remaining == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "density": self.density, "collapsed": self.collapsed}


def layer_report(model: nn.Module, params: Iterable[tuple[nn.Module, str]] | None = None) -> list[LayerStats]:
    """Per pruned tensor: name, shape, size, remaining weights, density, collapsed.

    A tensor pruned by ``torch.nn.utils.prune`` counts the ones of its mask; any other
    tensor (e.g. after ``prune.remove``) counts its non-zero entries. A tied weight
    (one tensor several modules hold) is one row, under its first use, unless its uses
    are masked differently.

    Args:
        model: the network.
        params: the ``(module, name)`` pairs to report; default: every conv and linear weight.

    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> [(s.name, s.remaining, s.density) for s in layer_report(model)]
    [('0.weight', 8, 1.0)]
    """
    if not isinstance(model, nn.Module):
        raise PruningTypeError(f"layer_report(): model should be a torch.nn.Module, got {type(model).__name__}")
    names = {id(m): n for n, m in model.named_modules()}
    rows, reported = [], {}
    for module, name in (prunable_parameters(model) if params is None else params):
        mask = module._buffers.get(f"{name}_mask")
        tensor = mask if mask is not None else getattr(module, name, None)
        if not isinstance(tensor, torch.Tensor):
            raise PruningError(f"layer_report(): {type(module).__name__} has no tensor named '{name}'")
        # A tied weight's uses are one tensor: one row, unless they are masked differently.
        held = held_tensor(module, name)
        if held is not None:  # (None: a computed weight, one row each)
            if id(held) in reported and torch.equal(reported[id(held)], tensor != 0):
                continue
            reported.setdefault(id(held), tensor != 0)
        qualname = names.get(id(module), type(module).__name__)
        rows.append(LayerStats(
            name=f"{qualname}.{name}" if qualname else name,
            shape=tuple(tensor.shape),
            size=tensor.numel(),
            remaining=int(torch.count_nonzero(tensor)),
        ))
    return rows


def collapsed_layers(model: nn.Module, params: Iterable[tuple[nn.Module, str]] | None = None) -> list[str]:
    """Names of the tensors with no weight left."""
    return [row.name for row in layer_report(model, params) if row.collapsed]


def format_report(rows: list[LayerStats]) -> str:
    """A fixed-width table of :func:`layer_report` rows with a total line."""
    width = max([len(r.name) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'shape':>20}  {'size':>10}  {'remaining':>10}  {'density':>9}  collapsed"]
    for r in rows:
        lines.append(
            f"{r.name:<{width}}  {str(r.shape):>20}  {r.size:>10,}  {r.remaining:>10,}  "
            f"{r.density:>9.2e}  {'YES' if r.collapsed else ''}"
        )
    size, remaining = sum(r.size for r in rows), sum(r.remaining for r in rows)
    lines.append(
        f"{'total':<{width}}  {'':>20}  {size:>10,}  {remaining:>10,}  "
        f"{(remaining / size if size else 0):>9.2e}  {sum(r.collapsed for r in rows) or ''}"
    )
    return "\n".join(lines)


@dataclass
class CollapseResult:
    """Outcome of :func:`critical_compression`.

    Attributes:
        criterion: the criterion's name.
        critical_exponent: the largest x on the grid with no collapsed layer at 10^x
            (and none at any smaller grid point); ``None`` if even the first point collapses.
        points: per grid point, ``{"exponent", "compression", "density", "collapsed": [...]}``.
        densities: per grid point, the per-layer densities ``{layer: density}``.
    """

    criterion: str
    critical_exponent: float | None
    points: list[dict[str, Any]] = field(default_factory=list)
    densities: list[dict[str, float]] = field(default_factory=list)

    @property
    def critical_compression(self) -> float | None:
        return None if self.critical_exponent is None else 10.0 ** self.critical_exponent


def critical_compression(
    model_fn: Callable[[], nn.Module],
    criterion: str,
    *,
    max_exponent: float = 6.0,
    step: float = 0.25,
    min_exponent: float = 0.0,
    stop_at_collapse: bool = True,
    progress: bool | None = None,
    **prune_kwargs: Any,
) -> CollapseResult:
    """The largest compression 10^x on a grid at which ``criterion`` collapses no layer.

    Each grid point prunes a fresh ``model_fn()`` (so give it a fixed seed) from dense
    to compression 10^x (density 10^-x) with :func:`~synflow_plugin.masking.compute_masks`
    over every conv and linear weight.

    Args:
        model_fn: builds the network; called once per grid point.
        criterion: a registry name.
        max_exponent, step, min_exponent: the grid x = min, min+step, ..., max.
        stop_at_collapse: stop at the first collapsing point (the critical compression
            is then known); ``False`` evaluates the whole grid.
        progress: a tqdm bar over the grid (``None``: only on a terminal).
        **prune_kwargs: passed on: ``example_inputs``, ``data``, ``iterations``, ...

    Returns:
        A :class:`CollapseResult`.
    """
    if isinstance(model_fn, nn.Module) or not callable(model_fn):
        raise PruningTypeError(
            f"critical_compression(): model_fn should build a fresh model when called, got "
            f"{type(model_fn).__name__}; pass e.g. lambda: create_model('vgg16_bn')"
        )
    if not (isinstance(step, (int, float)) and step > 0):
        raise PruningError(f"critical_compression(): step={step!r} should be a positive number")
    if not 0 <= min_exponent <= max_exponent:
        raise PruningError(
            f"critical_compression(): need 0 <= min_exponent <= max_exponent, got {min_exponent}, {max_exponent}"
        )
    count = int(math.floor((max_exponent - min_exponent) / step + 1e-9)) + 1
    grid = [round(min_exponent + i * step, 10) for i in range(count)]
    result = CollapseResult(criterion=str(criterion), critical_exponent=None)
    bar = tqdm(grid, desc=f"collapse sweep {criterion}", unit="point",
               disable=(not progress) if progress is not None else None, leave=False)
    clean_so_far = True
    for exponent in bar:
        model = model_fn()
        params = prunable_parameters(model)
        density = 10.0 ** -exponent
        with warnings.catch_warnings():  # collapse is what this measures: recorded, not warned
            warnings.simplefilter("ignore", LayerCollapseWarning)
            masks = compute_masks(model, params, criterion, amount=1.0 - density, progress=False,
                                  caller="critical_compression()", **prune_kwargs)
        names = {id(m): n for n, m in model.named_modules()}
        mask_of = {(id(m), n): mask for (m, n), mask in zip(params, masks)}
        # a tied weight's uses share one mask: the tensor counts once, under its first use
        first = [uses[0] for uses in group_by_tensor(params)]
        per_layer = {f"{names[id(m)]}.{n}" if names[id(m)] else n: float(mask_of[id(m), n].float().mean())
                     for m, n in first}
        collapsed = [name for name, d in per_layer.items() if d == 0.0]
        unique = [mask_of[id(m), n] for m, n in first]
        result.points.append({
            "exponent": exponent, "compression": 10.0 ** exponent,
            "density": sum(int(mask.sum()) for mask in unique) / sum(mask.numel() for mask in unique),
            "collapsed": collapsed,
        })
        result.densities.append(per_layer)
        clean_so_far = clean_so_far and not collapsed
        if clean_so_far:
            result.critical_exponent = exponent
        elif stop_at_collapse:
            break
    return result


def conservation_gap(scores: list[torch.Tensor]) -> float:
    """Largest relative difference between per-layer score sums.

    SynFlow scores of a bias-free ReLU network at initialisation satisfy a
    conservation law: every layer carries the same total flow R, so the gap is 0 up
    to rounding (paper, Theorem 2).
    """
    sums = torch.stack([s.double().sum() for s in scores])
    return float((sums.max() - sums.min()) / sums.abs().max())
