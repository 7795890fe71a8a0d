"""ProsPr: Prospect Pruning (Alizadeh, Tailor, Zintgraf, van Amersfoort, Farquhar, Lane, Gal,
ICLR 2022, https://arxiv.org/abs/2202.08132).

SNIP scores a weight by how much the loss at initialisation depends on it. ProsPr asks how
much the loss *after a few steps of training* depends on it: the mask m of ones multiplies
the initial weights, K steps of SGD are taken on the masked network, and the score is the
meta-gradient through those steps,

    θ₀ = θ ⊙ m,   θ_{k+1} = θ_k − η · u_k(∇L_k(θ_k)),   score = |∂L_K(θ_K) / ∂m|   (at m = 1),

with u_k the SGD update (momentum μ) and L_k the loss on the k-th batch. With K = 0 it is
SNIP on one batch: ∂L(θ ⊙ m)/∂m = θ ⊙ ∇L(θ).

>>> import torch, torch.nn as nn
>>> from synflow_plugin import compute_masks, compute_scores, prunable_parameters
>>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> data = [(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))]
>>> masks = compute_masks(model, prunable_parameters(model), "prospr", 0.9, data=data)
>>> sum(int(m.sum()) for m in masks)
19
>>> prospr = compute_scores(model, prunable_parameters(model), "prospr", data=data, steps=0)
>>> snip = compute_scores(model, prunable_parameters(model), "snip", data=data)
>>> all(torch.allclose(a, b) for a, b in zip(prospr, snip))
True
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings

import torch

from synflow_plugin.criteria.base import Criterion, ScoringState, to_device
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError

__all__ = ["ProsPrCriterion", "ProsPrWarning"]

#: How many times the inner learning rate is divided by 10 when the steps diverge.
_BACKOFFS = 30


class ProsPrWarning(UserWarning):
    """ProsPr's inner steps diverged with the given ``lr`` and were taken with a smaller one."""


def _cast(value, dtype: torch.dtype | None):
    """Floating tensors of a (nested) batch in the model's dtype (after a float64 promotion)."""
    if dtype is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != dtype else value
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


def _real(value, name: str, low: float, inclusive: bool, hint: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or (value < low if inclusive else value <= low)):
        bound = f">= {low}" if inclusive else f"> {low}"
        raise PruningError(f"{name}={value!r} should be a finite number {bound} ({hint})")
    return float(value)


@register_criterion
class ProsPrCriterion(Criterion):
    """Score = |∂L(θ_K)/∂m| after K functional SGD steps from θ ⊙ m (ProsPr, Alizadeh et al. 2022).

    Every parameter of the scoring copy takes part in the inner steps (biases and norms
    too, as in the official code); the steps are taken on detached clones passed to the
    model with :func:`torch.func.functional_call`, so nothing of the copy is trained in
    place. Step k uses the k-th batch of ``data`` and the meta-loss the next one, cycling
    through the batches given (a single batch is reused for every step); only the first
    ``steps + 1`` batches are read. The loss is
    ``loss_fn`` (cross-entropy by default). Pruned weights stay zero through the steps.

    Args:
        steps: K, the inner SGD steps (the official example: 3); 0 gives SNIP's scores.
        lr: η, the inner learning rate (the official example: 0.5).
        momentum: μ, the inner SGD momentum (the official example: 0.9).

    Differences from the official code (mil-ad/prospr, ``prospr/prospr.py``): the copy
    stays in eval mode (BatchNorm on its running statistics, as every criterion here)
    where the official code trains in train mode; the first momentum buffer keeps its
    graph (the official code detaches it, which drops the first step's second-order
    term when μ > 0); pruned weights are held at zero during the inner steps (the
    official code prunes from a dense network only). Where the steps overflow (weights
    far from unit scale), the round is scored again on a float64 copy, and if they still
    diverge, with lr divided by 10 until they stay finite (at most 30 times), with a
    :class:`ProsPrWarning` naming the lr used; the official code returns NaN scores
    there. Memory grows with K: the graph of every step is kept for the meta-gradient.
    """

    name = "prospr"
    summary = "meta-gradient of the loss after a few SGD steps (Alizadeh et al. 2022)"
    needs_data = True

    def __init__(self, *, steps: int = 3, lr: float = 0.5, momentum: float = 0.9) -> None:
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
            raise PruningError(f"steps={steps!r} should be an int >= 0 (the official example uses 3; 0 is SNIP)")
        self.steps = int(steps)
        self.lr = _real(lr, "lr", 0.0, False, "the official example uses 0.5")
        self.momentum = _real(momentum, "momentum", 0.0, True, "the official example uses 0.9")
        if self.momentum >= 1:
            raise PruningError(f"momentum={momentum!r} should be in [0, 1) (the official example uses 0.9)")

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        lr = self.lr
        scores, diverged = self._meta_gradients(state, lr)
        if diverged is not None and state.promote():
            # Large weights make the inner steps overflow float32 first: float64 has room.
            scores, diverged = self._meta_gradients(state, lr)
        first = diverged
        for _ in range(_BACKOFFS):
            if diverged is None:
                break
            lr /= 10
            scores, diverged = self._meta_gradients(state, lr)
        if diverged is not None:
            raise PruningError(
                f"prospr: the inner SGD steps diverge ({first}) with lr={self.lr}, momentum={self.momentum}, "
                f"even in float64 and with lr down to {lr:.1e}. Check the network for layers scaled far "
                "from unit size, or pass steps=0 (SNIP)."
            )
        if lr != self.lr:
            warnings.warn(
                f"prospr: the inner SGD steps diverge with lr={self.lr} on this network ({first}); the "
                f"meta-gradient was taken with lr={lr:.1e}, the largest power-of-ten fraction of it that "
                "stays finite. Pass a smaller lr= to choose it yourself.",
                ProsPrWarning, stacklevel=2,
            )
        return scores

    def _meta_gradients(self, state: ScoringState, lr: float) -> tuple[list[torch.Tensor], str | None]:
        """The scores, and what diverged (None when every loss and score is finite)."""
        dtype = state.model_dtype
        if "prospr_batches" not in state.cache:  # steps + 1 batches at most are used
            state.cache["prospr_batches"] = list(itertools.islice(state.inputs.batches(self.name), self.steps + 1))
        batches = [(_cast(to_device(x, state.device), dtype), to_device(y, state.device))
                   for x, y in state.cache["prospr_batches"]]
        names = [t.qualified_name for t in state.targets]
        target_ids = {id(p) for p in state.params}
        # The other parameters take the steps too, unless the user froze them.
        others = {n: p for n, p in state.model.named_parameters()
                  if id(p) not in target_ids and p.is_floating_point() and state.requires_grad.get(n, True)}
        alive = [a.to(p.dtype) for a, p in zip(state.alive(), state.params)]
        masks = [torch.ones_like(p, requires_grad=True) for p in state.params]
        fast = {n: p.detach() * m for n, p, m in zip(names, state.params, masks)}
        fast.update({n: p.detach().clone().requires_grad_(True) for n, p in others.items()})
        keep = dict(zip(names, alive))
        buffers: dict[str, torch.Tensor] = {}
        for k in range(self.steps):
            loss = self._loss(state, fast, batches[k % len(batches)])
            if not bool(torch.isfinite(loss)):
                return [], f"the loss before step {k + 1} is {float(loss.detach())}"
            keys = list(fast)
            grads = torch.autograd.grad(loss, [fast[n] for n in keys], create_graph=True, allow_unused=True)
            updated = {}
            for n, g in zip(keys, grads):
                if g is None:
                    updated[n] = fast[n]
                    continue
                if self.momentum:
                    g = g if n not in buffers else buffers[n] * self.momentum + g
                    buffers[n] = g
                step = fast[n] - lr * g
                updated[n] = step * keep[n] if n in keep else step
            fast = updated
        loss = self._loss(state, fast, batches[self.steps % len(batches)])
        if not bool(torch.isfinite(loss)):
            return [], f"the loss after {self.steps} steps is {float(loss.detach())}"
        grads = torch.autograd.grad(loss, masks, allow_unused=True)
        scores = [torch.zeros_like(p) if g is None else g.detach().abs() * a
                  for p, g, a in zip(state.params, grads, alive)]
        bad = [t.qualified_name for t, s in zip(state.targets, scores) if not bool(torch.isfinite(s).all())]
        if bad:
            return [], f"the meta-gradient of '{bad[0]}' overflowed"
        return scores, None

    def _loss(self, state: ScoringState, weights: dict, batch) -> torch.Tensor:
        inputs, labels = batch
        output = state.inputs.call(state.model, inputs, "a batch of data", weights=weights)
        return state.inputs.loss(output, labels)
