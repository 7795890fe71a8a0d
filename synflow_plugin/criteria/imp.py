"""IMP: iterative magnitude pruning with rewinding, the lottery-ticket procedure
(Frankle & Carbin, ICLR 2019, https://arxiv.org/abs/1803.03635; rewinding: Frankle et
al., ICML 2020, https://arxiv.org/abs/1912.05671; the structure of open_lth's
``lottery/runner.py``).

Level ℓ = 1 … L: train the network θ ⊙ m from the rewinding point, prune the fraction
p of the surviving weights with the smallest trained magnitude |θ_T| (globally by
default), rewind the survivors to θ_k (k = 0: the initialisation) and repeat. After L
levels the density is (1 − p)^L; with a target density d the level count is
L = ⌈log d / log(1 − p)⌉, the last level pruning exactly to d.

The user's training is ``train_fn(model)``: it trains, in place, the copy it is given.
The weights already pruned stay zero during that training: before every forward of
the copy they are zeroed again (so that neither the gradient step, nor weight decay,
nor momentum revives them, as open_lth's ``PrunedModel`` does), and once more when
``train_fn`` returns.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from synflow_plugin.criteria.base import Criterion, ScoringState
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["IMPCriterion", "IMPWarning", "imp_keep_fractions"]

_logger = logging.getLogger("synflow_plugin")


class IMPWarning(UserWarning):
    """IMP's training did not change the weights, or rewound weights were not written."""


def imp_keep_fractions(density: float, levels: int | None = None, rate: float | None = None) -> list[float]:
    """The fraction of the starting survivors IMP keeps after each level.

    ``rate`` alone (default 0.2): (1 − rate)^ℓ per level, as many levels as reach
    ``density``, the last exactly at it. ``levels`` alone: the same fraction every level,
    ``density^(ℓ/L)``. Both: ``levels − 1`` levels at ``rate``, the last to ``density``.

    >>> [round(f, 3) for f in imp_keep_fractions(0.5, rate=0.2)]
    [0.8, 0.64, 0.512, 0.5]
    >>> imp_keep_fractions(0.25, levels=2)
    [0.5, 0.25]
    """
    if levels is None and rate is None:
        rate = 0.2
    if density <= 0.0 or density >= 1.0:
        return [density] * (levels or 1)
    if levels is None:
        levels = max(1, math.ceil(math.log(density) / math.log(1.0 - rate) - 1e-9))
    if rate is None:
        return [density ** (k / levels) for k in range(1, levels + 1)]
    fractions = [(1.0 - rate) ** k for k in range(1, levels)] + [density]
    if levels > 1 and fractions[-2] < density:
        reached = math.ceil(math.log(density) / math.log(1.0 - rate) - 1e-9)
        raise PruningError(
            f"imp: levels={levels} at rate={rate} overshoots: the density {density:.4g} (amount "
            f"{1 - density:.4g}) is reached after {reached} level{'s' if reached > 1 else ''}, not {levels}. "
            "Pass only rate= (the level count follows from the amount) or only levels=."
        )
    return fractions


def _target_tensors(model: nn.Module, state: ScoringState) -> list[torch.Tensor]:
    return [model.get_submodule(t.module_name)._parameters[t.name] for t in state.targets]


@register_criterion
class IMPCriterion(Criterion):
    """Iterative magnitude pruning with rewinding: one level per round, the score of a
    weight is its magnitude after ``train_fn`` trained the rewound, masked network.

    Args:
        train_fn: ``train_fn(model)`` trains the model it is given in place (a copy, with
            the weights pruned so far held at zero); its return value is ignored, unless
            it is another module (an error). Required.
        levels: pruning levels L; default: as many as ``rate`` needs to reach the amount.
        rate: fraction of the surviving weights pruned per level (default 0.2 when
            ``levels`` is not given); with both, ``levels − 1`` levels at ``rate`` and a
            last one to the exact amount.
        rewind_step: 0 (the default) rewinds to the initialisation: the model's weights
            are the ticket's and stay as they are. k > 0 rewinds to the weights after the
            k-th optimizer step (``torch.optim``) of the first level's training (Frankle
            et al. 2020); those weights differ from the model's, so they are kept in
            :attr:`rewound_state` and, with ``rewind_into=``, written into that module
            (every parameter and buffer) at the end of the call.
        rewind_into: the module (your model) to write the rewound weights into when
            ``rewind_step > 0``; a warning says where they are when it is not given.

    ``history`` holds, after a call, one entry per level: its seconds, and the weights
    it started with; each level is also logged on the ``synflow_plugin`` logger.
    """

    name = "imp"
    summary = "iterative magnitude pruning, rewinding, trains with train_fn (Frankle & Carbin 2019)"
    needs_training = True
    ranks_magnitude = True

    def __init__(self, *, train_fn: Callable[[nn.Module], Any] | None = None, levels: int | None = None,
                 rate: float | None = None, rewind_step: int = 0, rewind_into: nn.Module | None = None) -> None:
        if train_fn is not None and not callable(train_fn):
            raise PruningTypeError(f"imp: train_fn should be callable as train_fn(model), got {type(train_fn).__name__}")
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, numbers.Integral) or levels < 1):
            raise PruningError(f"imp: levels={levels!r} should be a positive int or None")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, numbers.Real)
                                 or not 0.0 < float(rate) < 1.0):
            raise PruningError(f"imp: rate={rate!r} should be a fraction in (0, 1), e.g. 0.2 (20% per level)")
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, numbers.Integral) or rewind_step < 0:
            raise PruningError(f"imp: rewind_step={rewind_step!r} should be an int >= 0 (0: the initialisation)")
        if rewind_into is not None and not isinstance(rewind_into, nn.Module):
            raise PruningTypeError(f"imp: rewind_into should be an nn.Module, got {type(rewind_into).__name__}")
        if rewind_into is not None and rewind_step == 0:
            raise PruningError(
                "imp: rewind_into= is only used with rewind_step > 0; rewinding to the initialisation "
                "keeps the model's own weights, so there is nothing to write."
            )
        self.train_fn = train_fn
        self.levels = None if levels is None else int(levels)
        self.rate = None if rate is None else float(rate)
        self.rewind_step = int(rewind_step)
        self._rewind_into = rewind_into
        self._history: list[dict] = []
        self._rewound: dict[str, torch.Tensor] | None = None

    @property
    def history(self) -> list[dict]:
        """Per level of the last call: ``{"level", "seconds", "weights"}``."""
        return list(self._history)

    @property
    def rewound_state(self) -> dict[str, torch.Tensor] | None:
        """With ``rewind_step > 0``: the ``state_dict`` (plain names, e.g. ``fc.weight``)
        of the model after ``rewind_step`` optimizer steps of the first level, from the
        last call; ``None`` otherwise."""
        return self._rewound

    def keep_fractions(self, density: float, iterations: int | None) -> list[float]:
        levels = self.levels
        if iterations is not None and levels is not None and iterations != levels:
            raise PruningError(
                f"imp: iterations={iterations} and levels={levels} disagree; IMP's rounds are its levels: "
                "pass one of them."
            )
        return imp_keep_fractions(density, levels if levels is not None else iterations, self.rate)

    def prepare(self, state: ScoringState) -> None:
        self._history, self._rewound = [], None

    def _training_copy(self, state: ScoringState, masks: list[torch.Tensor]) -> nn.Module:
        model = copy.deepcopy(state.model)
        rewound = state.cache.get("rewind_point")
        with torch.no_grad():
            if rewound is not None:
                model.load_state_dict(rewound)
            for p, mask in zip(_target_tensors(model, state), masks):
                p.masked_fill_(~mask, 0)
        for name, p in model.named_parameters():
            p.requires_grad_(state.requires_grad.get(name, True))
        for name, m in model.named_modules():
            m.training = state.modes.get(name, m.training)
        return model

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        level, start = state.round, time.perf_counter()
        masks = state.alive()
        model = self._training_copy(state, masks)
        tensors = _target_tensors(model, state)
        before = [p.detach().clone() for p in tensors]

        def hold_pruned(*_: Any) -> None:
            with torch.no_grad():
                for p, mask in zip(tensors, masks):
                    if p.device != mask.device:
                        mask = mask.to(p.device)
                    p.masked_fill_(~mask, 0)

        handles = [model.register_forward_pre_hook(hold_pruned)]
        steps = [0]
        record = self.rewind_step > 0 and "rewind_point" not in state.cache
        if record:
            own = {id(p) for p in model.parameters()}

            def count(optimizer: torch.optim.Optimizer, *_: Any) -> None:
                if any(id(p) in own for g in optimizer.param_groups for p in g["params"]):
                    steps[0] += 1
                    if steps[0] == self.rewind_step:
                        hold_pruned()
                        state.cache["rewind_point"] = {k: v.detach().clone()
                                                       for k, v in model.state_dict().items()}

            handles.append(register_optimizer_step_post_hook(count))
        train_fn = self.train_fn
        what = getattr(train_fn, "__qualname__", None) or type(train_fn).__name__
        try:
            result = train_fn(model)
        except Exception as exc:
            raise PruningError(
                f"imp: train_fn {what} raised {type(exc).__name__} at level {level + 1} of {state.rounds}: {exc}. "
                "Your model was not changed."
            ) from exc
        finally:
            for handle in handles:
                handle.remove()
        if isinstance(result, nn.Module) and result is not model:
            raise PruningError(
                f"imp: train_fn {what} returned another module ({type(result).__name__}); it should train the "
                "model it is given in place (its return value is ignored)."
            )
        hold_pruned()
        if record and "rewind_point" not in state.cache:
            raise PruningError(
                f"imp: rewind_step={self.rewind_step}, but train_fn {what} made only {steps[0]} torch.optim "
                "optimizer step(s) on the model it was given in the first level; lower rewind_step, or train "
                "with a torch.optim optimizer over model.parameters()."
            )
        trained = []
        for target, p, p0, mask in zip(state.targets, tensors, before, masks):
            value = p.detach()
            if not bool(torch.isfinite(value).all()):
                raise PruningError(
                    f"imp: after train_fn {what} at level {level + 1}, '{target.qualified_name}' holds NaN or "
                    "infinite values; the training diverged (lower its learning rate)."
                )
            trained.append(value.to(device=state.params[len(trained)].device, dtype=state.params[len(trained)].dtype))
        if all(torch.equal(p.detach().to(p0.device), p0) for p, p0 in zip(tensors, before)):
            warnings.warn(
                f"imp: train_fn {what} did not change any pruned tensor at level {level + 1}: the scores are "
                "the magnitudes at the rewinding point, i.e. magnitude pruning. Check that train_fn trains the "
                "model it is given (not a model of its own).",
                IMPWarning, stacklevel=4,
            )
        seconds = time.perf_counter() - start
        kept = sum(int(m.sum()) for m in masks)
        self._history.append({"level": level, "seconds": seconds, "weights": kept})
        _logger.info("imp: level %d/%d took %.2f s (trained with %d weights)", level + 1, state.rounds, seconds, kept)
        if level == state.rounds - 1 and self.rewind_step > 0:
            self._finish_rewind(state)
        return trained

    def _finish_rewind(self, state: ScoringState) -> None:
        self._rewound = state.cache["rewind_point"]
        target = self._rewind_into
        if target is None:
            warnings.warn(
                f"imp: rewind_step={self.rewind_step}: the ticket is the masks with the weights after "
                f"{self.rewind_step} optimizer steps, not your model's weights, which were left unchanged. "
                "Read them from the criterion's rewound_state, or pass rewind_into=model to write them.",
                IMPWarning, stacklevel=5,
            )
            return
        _write_state(target, self._rewound)


def _write_state(model: nn.Module, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` (plain names) into ``model``'s parameters and buffers, into
    ``<name>_orig`` where ``torch.nn.utils.prune`` reparametrised the tensor."""
    slots = []
    for key, value in values.items():
        module_name, _, name = key.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        slot = None
        if module is not None:
            for store, attr in ((module._parameters, name), (module._parameters, f"{name}_orig"),
                                (module._buffers, name)):
                if store.get(attr) is not None:
                    slot = store[attr]
                    break
        if slot is None or slot.shape != value.shape:
            raise PruningError(
                f"imp: rewind_into has no tensor '{key}' of shape {tuple(value.shape)}; pass the model that "
                "was pruned (rewind_into=model). Nothing was written."
            )
        slots.append((slot, value))
    with torch.no_grad():
        for slot, value in slots:
            slot.copy_(value.to(device=slot.device, dtype=slot.dtype))
