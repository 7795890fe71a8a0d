"""PHEW: Paths with Higher Edge Weights (Patil & Dovrolis, ICML 2021, https://arxiv.org/abs/2010.11354).

PHEW builds a sparse network from random walks through the initialised one, without data.
A walk crosses the layers one at a time; from unit j it follows the connection to unit i
with probability proportional to the weight magnitude,

    P(j → i) = ‖W_ij‖₁ / Σ_i' ‖W_i'j‖₁     (forward; backward walks use Σ_j' ‖W_ij'‖₁),

and inside a convolution kernel it picks the weight W_ij[a] with probability |W_ij[a]| / ‖W_ij‖₁.
Walks alternate between input-to-output walks, started from the input units in turn, and
output-to-input walks, started from the output units in turn. Every weight a walk crosses
is kept, until the budget is met. The paths with higher edge weights conserve the flow of
the network like SynFlow while spreading over many units like a random network.

>>> import torch, torch.nn as nn
>>> from synflow_plugin import compute_masks, prunable_parameters
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> masks = compute_masks(model, prunable_parameters(model), "phew", 0.9, seed=0)
>>> sum(int(m.sum()) for m in masks)
19
"""

from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from synflow_plugin.criteria.base import Criterion, ScoringState, check_seed
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError

__all__ = ["PHEWCriterion", "PHEWWarning"]

_WALKABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NEVER = 2**62
#: Walks stop when a block of them crosses fewer new weights than this share of its crossings.
_STALL = 0.01


class PHEWWarning(UserWarning):
    """PHEW's walks cannot follow the network exactly (a break in the chain of layers, or
    fewer weights walked than asked): the message says what was done instead."""


class _Sampler:
    """Draws a column of a given row of a non-negative matrix, with probability ∝ its entry.

    Every row's normalised cumulative sum, shifted by the row's index, makes one sorted
    key; a draw is one ``searchsorted`` of row + U(0, 1). Zero entries are never drawn."""

    def __init__(self, rows: torch.Tensor) -> None:
        cumulative = rows.cumsum(1)
        total = cumulative[:, -1:]
        self.cols = rows.shape[1]
        index = torch.arange(rows.shape[0], dtype=torch.float64)[:, None]
        self.key = (index + torch.where(total > 0, cumulative / total.clamp_min(1e-300), 0.0)).reshape(-1)
        positive = rows > 0
        last = self.cols - 1 - positive.flip(1).to(torch.int8).argmax(1)
        self.last = torch.where(positive.any(1), last, 0)

    def draw(self, row: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        u = row.to(torch.float64) + torch.rand(row.shape, dtype=torch.float64, generator=generator)
        col = torch.searchsorted(self.key, u, right=True) - row * self.cols
        return torch.minimum(col.clamp_min(0), self.last[row])  # rounding at a row's end stays inside it


class _Layer:
    """One walkable target: |W| as (out, in, kernel), its connection masses and samplers, on the CPU."""

    def __init__(self, weight: torch.Tensor) -> None:
        a = weight.detach().to("cpu", torch.float64).abs()
        self.shape = weight.shape
        self.out, self.inp = a.shape[0], a.shape[1]
        self.kernel = a[0, 0].numel() if a.dim() > 2 else 1
        self.abs = a.reshape(self.out, self.inp, self.kernel)
        self.mass = self.abs.sum(2)  # (out, in): ‖W_ij‖₁
        self.in_mass = self.mass.sum(0)  # what leaves input unit j
        self.out_mass = self.mass.sum(1)  # what reaches output unit i
        self.dead = not bool(self.mass.any())
        if not self.dead:
            self.forward = _Sampler(self.mass.t())  # from input unit j to output unit i ∝ ‖W_ij‖₁
            self.backward = _Sampler(self.mass)  # from output unit i to input unit j
            self.within = _Sampler(self.abs.reshape(-1, self.kernel)) if self.kernel > 1 else None


@register_criterion
class PHEWCriterion(Criterion):
    """Score = how early PHEW's biased random walks first cross a weight (Patil & Dovrolis 2021).

    The targets are walked as a chain, in the order given (the order of the layers in
    the network): the output unit where a walk leaves one layer is the input unit where
    it enters the next. A convolution followed by a linear layer whose inputs are a
    whole multiple S of the channels (a flatten) enters at a uniformly drawn one of the
    S features of that channel, as the official code does; going back, a feature maps to
    its channel. Where the next target's inputs match neither (a residual shortcut, a
    concatenation), or where a unit has no surviving connection, the walk goes on from a
    unit drawn with probability proportional to its weight mass in that layer; a
    :class:`PHEWWarning` names every such break of the chain once per call.

    How walks become scores: walk n (even: forward, started at input unit n/2 mod
    #inputs; odd: backward, started at output unit (n−1)/2 mod #outputs) crosses one
    weight per layer, at time n·L + l (L layers, l its step). A weight's score is
    higher the earlier its first crossing, so keeping the top k scores keeps exactly the
    first k distinct weights the walks cross, the mask PHEW has when it reaches k weights.
    Walks run, in blocks, until they have crossed as many weights as the prune keeps
    (and at least ``coverage`` of the survivors), or, with a :class:`PHEWWarning`, until
    a block crosses almost no new weight (under 1% of its crossings: the rest have too
    little mass to be reached) or 10 walks per weight asked were taken. Only then do
    weights the walks never crossed get kept, by |w| relative to the largest of their
    tensor (below every crossed weight), and the warning says so. Pruned weights score zero.

    Args:
        coverage: the fraction of the surviving weights the walks cross at least
            (default 0.1); the pruning loop raises it to the density it keeps.
        seed: seeds the walks (a private CPU generator: the same masks on every device;
            the global RNG is untouched); None draws a seed from torch's global RNG.

    Differences from the official code (ShreyasMalakarjunPatil/PHEW, ``PHEW/phew.py``
    ``phew_masks``): the budget is met exactly (the official code completes the last walk
    and overshoots by up to a walk); a unit with no surviving connection is left by a
    mass-proportional jump (the official code picks a uniform unit and may then select a
    zero weight); chain breaks are jumps (the official code special-cases ResNets'
    1x1 shortcuts by a coin flip); only weights of ``nn.Linear`` and ungrouped
    ``nn.Conv1d/2d/3d`` are walked: any other target (attention, recurrent, grouped or
    transposed convolutions, embeddings) is refused with a :class:`PruningError`.
    """

    name = "phew"
    summary = "biased random walks, probability ~ |w|, data-free (Patil & Dovrolis 2021)"
    seeded = True

    def __init__(self, *, coverage: float = 0.1, seed: int | None = 0) -> None:
        if (isinstance(coverage, bool) or not isinstance(coverage, numbers.Real) or not math.isfinite(coverage)
                or not 0 < coverage <= 1):
            raise PruningError(f"coverage={coverage!r} should be a number in (0, 1] (the fraction of the "
                               "surviving weights the walks cross; default 0.1)")
        self.coverage = float(coverage)
        self.seed = check_seed(seed, "phew")

    def prepare(self, state: ScoringState) -> None:
        for target in state.targets:
            module = state.model.get_submodule(target.module_name)
            walkable = (isinstance(module, _WALKABLE) and target.name == "weight"
                        and getattr(module, "groups", 1) == 1)
            if not walkable:
                kind = type(module).__name__ + (f" with groups={module.groups}" if getattr(module, "groups", 1) != 1
                                                else "")
                raise PruningError(
                    f"PHEW walks from unit to unit through linear and ungrouped convolution layers; "
                    f"'{target.qualified_name}' belongs to a {kind}, which it cannot walk. Leave it out "
                    "of the pruned parameters, e.g. [(m, n) for m, n in prunable_parameters(model) if "
                    "isinstance(m, (nn.Linear, nn.Conv2d)) and n == 'weight' and getattr(m, 'groups', 1) == 1], "
                    "or use another data-free criterion (synflow, ntksap)."
                )
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()))
        state.cache["phew_generator"] = torch.Generator().manual_seed(seed)
        breaks = []
        for a, b in zip(state.targets, state.targets[1:]):
            out, inp = a.shape[0], b.shape[1]
            if not (inp == out or (len(a.shape) > 2 and len(b.shape) == 2 and inp % out == 0)):
                breaks.append(f"'{a.qualified_name}' ({out} outputs) -> '{b.qualified_name}' ({inp} inputs)")
        if breaks:
            warnings.warn(
                "phew: the walks cannot follow the chain of layers at " + "; ".join(breaks)
                + ": there they go on from a unit drawn in proportion to its weight mass.",
                PHEWWarning, stacklevel=2,
            )

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        layers = [_Layer(p) for p in state.params]
        generator = state.cache["phew_generator"]
        first = [torch.full((p.numel(),), _NEVER, dtype=torch.int64) for p in state.params]
        # Every weight the round keeps must have been walked: per group ranked together,
        # its budget for this round (the loop's), else the call's final share of all.
        alive = [int(a.sum()) for a in state.alive()]
        budgets = state.keeps or [(tuple(range(len(layers))), math.ceil(
            (state.density if state.density is not None else 0.0) * sum(alive) - 1e-9))]
        wanted = [(group, min(sum(alive[t] for t in group),
                              max(keep, math.ceil(self.coverage * sum(alive[t] for t in group) - 1e-9))))
                  for group, keep in budgets]
        total = sum(w for _, w in wanted)
        crossed, walks, cap = [0] * len(layers), 0, 10 * total + 100
        depth = len(layers)
        block = max(64, min(8192, total // max(depth, 1) + 1))

        def short() -> list[tuple[tuple[int, ...], int]]:
            return [(g, w) for g, w in wanted if sum(crossed[t] for t in g) < w]

        while short() and walks < cap and not all(layer.dead for layer in layers):
            starts = torch.arange(walks // 2, walks // 2 + block)
            self._forward(layers, first, starts, 2 * starts * depth, generator)
            self._backward(layers, first, starts, (2 * starts + 1) * depth, generator)
            walks += 2 * block
            before, crossed = sum(crossed), [int((f < _NEVER).sum()) for f in first]
            if sum(crossed) - before < _STALL * 2 * block * depth:
                break  # the walks keep crossing the same weights: the rest are (nearly) unreachable
        for group, w in short():
            names = ", ".join(f"'{state.targets[t].qualified_name}'" for t in group)
            warnings.warn(
                f"phew: {walks} walks crossed {sum(crossed[t] for t in group)} of the {w} weights of {names} "
                "that this round keeps and found almost no new ones; the rest are kept by relative magnitude, "
                "not by walks.",
                PHEWWarning, stacklevel=2,
            )
        end = max((int(f[f < _NEVER].max()) for f in first if bool((f < _NEVER).any())), default=0) + 1
        scores = []
        for f, layer, p in zip(first, layers, state.params):
            a = layer.abs.reshape(-1)
            top = float(a.max()) if a.numel() else 0.0
            fallback = a / top if top > 0 else a
            s = torch.where(f < _NEVER, (2 + end - f).to(torch.float64), fallback)
            scores.append(s.reshape(p.shape).to(p.device))
        return scores

    @staticmethod
    def _jump(units: torch.Tensor, mass: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``units``, with those of zero ``mass`` replaced by units drawn ∝ ``mass``."""
        stuck = mass[units] == 0
        if bool(stuck.any()):
            units = units.clone()
            units[stuck] = torch.multinomial(mass, int(stuck.sum()), replacement=True, generator=generator)
        return units

    def _forward(self, layers, first, starts, times, generator) -> None:
        units = None
        for l, layer in enumerate(layers):
            if layer.dead:
                units = None
                continue
            if units is None:
                units = starts % layer.inp if l == 0 else torch.multinomial(
                    layer.in_mass, starts.numel(), replacement=True, generator=generator)
            j = self._jump(units, layer.in_mass, generator)
            i = layer.forward.draw(j, generator)
            a = layer.within.draw(i * layer.inp + j, generator) if layer.within is not None else torch.zeros_like(i)
            _record(first[l], (i * layer.inp + j) * layer.kernel + a, times + l)
            units = None
            if l + 1 < len(layers):
                nxt = layers[l + 1]
                if nxt.inp == layer.out:
                    units = i
                elif len(layer.shape) > 2 and len(nxt.shape) == 2 and nxt.inp % layer.out == 0:
                    spread = nxt.inp // layer.out
                    units = i * spread + torch.randint(spread, i.shape, generator=generator)

    def _backward(self, layers, first, starts, times, generator) -> None:
        units = None
        depth = len(layers)
        for step, l in enumerate(reversed(range(depth))):
            layer = layers[l]
            if layer.dead:
                units = None
                continue
            if units is None:
                units = starts % layer.out if l == depth - 1 else torch.multinomial(
                    layer.out_mass, starts.numel(), replacement=True, generator=generator)
            i = self._jump(units, layer.out_mass, generator)
            j = layer.backward.draw(i, generator)
            a = layer.within.draw(i * layer.inp + j, generator) if layer.within is not None else torch.zeros_like(j)
            _record(first[l], (i * layer.inp + j) * layer.kernel + a, times + step)
            units = None
            if l > 0:
                prev = layers[l - 1]
                if layer.inp == prev.out:
                    units = j
                elif len(prev.shape) > 2 and len(layer.shape) == 2 and layer.inp % prev.out == 0:
                    units = j // (layer.inp // prev.out)


def _record(first: torch.Tensor, flat: torch.Tensor, times: torch.Tensor) -> None:
    """Keep, for every weight, the earliest time a walk crossed it."""
    first.scatter_reduce_(0, flat, times, reduce="amin")
