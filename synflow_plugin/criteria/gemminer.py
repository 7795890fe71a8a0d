"""GemMiner: lottery tickets found at initialisation by training scores (Sreenivasan et
al., "Rare Gems: Finding Lottery Tickets at Initialization", NeurIPS 2022,
https://arxiv.org/abs/2202.12002; the ``hc_iter`` algorithm of its code).

The weights θ stay frozen. Every weight gets a score s ∈ [0, 1], drawn from U[0, 1];
the network runs with the weights θ ⊙ 1[s > 0.5], and the gradient of the loss
reaches the scores straight through the rounding (∂1[s > 0.5]/∂s := 1):

    L(s) = CE(f(x; θ ⊙ 1[s > 0.5]), y) + λ ‖s‖²,    s ← clamp(s − η ∂L/∂s, 0, 1).

Every ``epochs`` epochs the surviving weights with the lowest scores are flagged off
for good, on the exponential schedule that reaches the target density, and the final
mask is the flags (the weights still unflagged, whatever their score).

In the pruning loop one round is one such period: the scores train for ``epochs``
epochs on ``data`` and are returned; the loop's bottom-k over the survivors is
GemMiner's flagging. A flagged weight is zero in the scoring copy, so its score no
longer receives any gradient of the loss (as the flag multiplies it in the paper's
code); the scores, the optimizer and its learning-rate schedule persist across rounds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import time
import warnings
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from synflow_plugin.criteria.base import Criterion, ScoringState, check_seed, to_device
from synflow_plugin.criteria.registry import register_criterion
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["GemMinerCriterion", "GemMinerWarning", "straight_through_mask"]

_logger = logging.getLogger("synflow_plugin")

_OPTIMIZERS = ("sgd", "adam")
_LR_SCHEDULES = ("cosine", "constant")
_INITS = ("model", "signed_constant")
_BATCHNORMS = ("model", "non_affine")


class GemMinerWarning(UserWarning):
    """Score-training steps were skipped: the loss or its gradient was not finite."""


class _StraightThrough(torch.autograd.Function):
    """1[s > threshold] forward, the identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, threshold: float) -> torch.Tensor:
        return (scores > threshold).to(scores.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def straight_through_mask(scores: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``1[scores > threshold]`` whose gradient passes to ``scores`` unchanged."""
    return _StraightThrough.apply(scores, threshold)


@contextlib.contextmanager
def _masked_weights(modules: list[nn.Module], names: list[str], values: list[torch.Tensor]) -> Iterator[None]:
    """The targets replaced by ``values`` (θ ⊙ mask, part of the autograd graph) while
    the model runs; the parameters are put back afterwards, whatever happens."""
    saved = []
    try:
        for module, name, value in zip(modules, names, values):
            saved.append((module, name, module._parameters[name]))
            module._parameters[name] = value  # read by the module's forward as self.<name>
        yield
    finally:
        for module, name, param in reversed(saved):
            module._parameters[name] = param


def _positive(value: Any, name: str, integer: bool = False, zero: bool = False) -> int | float:
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value) or (
            value < 0 or (value == 0 and not zero)):
        raise PruningError(
            f"gemminer: {name}={value!r} should be a {'positive int' if integer else 'finite number'}"
            f"{' >= 0' if zero else ' > 0' if not integer else ''}"
        )
    return int(value) if integer else float(value)


def _choice(value: Any, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise PruningError(f"gemminer: {name}={value!r} is not valid; expected one of {allowed}")
    return value


@register_criterion
class GemMinerCriterion(Criterion):
    """GemMiner: scores trained with the weights frozen, mask 1[s > 0.5] (straight-through),
    the lowest-scoring survivors flagged off every ``epochs`` epochs.

    Args:
        epochs: epochs of score training per round (the paper's ``iter_period``, 5);
            the call trains ``epochs * iterations`` epochs in all (default 29 rounds:
            145 epochs, the paper's 150-epoch ResNet-20 run).
        lr: learning rate of the scores (0.1, the ResNet-20 config).
        optimizer: ``"sgd"`` (momentum ``momentum``, the ResNet-20 config) or ``"adam"``
            (the VGG-16 config).
        momentum: SGD momentum (0.9); refused with ``optimizer="adam"``, which would not use it.
        weight_decay: the optimizer's weight decay on the scores (0, as the configs).
        lmbda: λ of the regulariser λ‖s‖² (1e-4 for ResNet-20; the VGG-16 config uses 1e-6).
        lr_schedule: ``"cosine"`` (annealed to 0 over all epochs of the call) or ``"constant"``.
        threshold: the rounding threshold of the mask (0.5).
        init: ``"model"`` (the weights as they are, the default) or ``"signed_constant"``
            (the paper: every target weight replaced by sign(θ)·√2/√fan_in in the scoring
            copy; the masks are found for those weights, the model is not changed).
        batchnorm: ``"model"`` (as it is) or ``"non_affine"`` (the paper's non-affine
            BatchNorm: weight 1, bias 0 in the scoring copy).
        train_mode: train the scores with the copy in training mode (BatchNorm on batch
            statistics, as the paper's code), else in eval mode.
        seed: seed of the U[0, 1] score initialisation (None: torch's global RNG).

    ``history`` holds, after a call, one entry per round: its seconds, mean loss and
    skipped steps; each round is also logged on the ``synflow_plugin`` logger.
    """

    name = "gemminer"
    summary = "scores trained through 1[s>0.5], bottom-k flagged (Sreenivasan et al. 2022)"
    needs_data = True
    reads_training_set = True
    seeded = True
    default_iterations = 29

    def __init__(self, *, epochs: int = 5, lr: float = 0.1, optimizer: str = "sgd", momentum: float | None = None,
                 weight_decay: float = 0.0, lmbda: float = 1e-4, lr_schedule: str = "cosine",
                 threshold: float = 0.5, init: str = "model", batchnorm: str = "model", train_mode: bool = True,
                 seed: int | None = None) -> None:
        self.epochs = _positive(epochs, "epochs", integer=True)
        self.lr = _positive(lr, "lr")
        self.optimizer = _choice(optimizer, "optimizer", _OPTIMIZERS)
        if momentum is not None and self.optimizer != "sgd":
            raise PruningError(
                f"gemminer: momentum={momentum!r} applies to optimizer='sgd' only; Adam keeps its own moment "
                "estimates. Leave momentum out, or pass optimizer='sgd'."
            )
        # Adam reads no momentum: None there, so that the criterion's repr is a valid call.
        self.momentum = None if self.optimizer != "sgd" else _positive(0.9 if momentum is None else momentum,
                                                                        "momentum", zero=True)
        self.weight_decay = _positive(weight_decay, "weight_decay", zero=True)
        self.lmbda = _positive(lmbda, "lmbda", zero=True)
        self.lr_schedule = _choice(lr_schedule, "lr_schedule", _LR_SCHEDULES)
        if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 <= threshold < 1.0:
            raise PruningError(f"gemminer: threshold={threshold!r} should be a number in [0, 1)")
        self.threshold = float(threshold)
        self.init = _choice(init, "init", _INITS)
        self.batchnorm = _choice(batchnorm, "batchnorm", _BATCHNORMS)
        if not isinstance(train_mode, bool):
            raise PruningTypeError(f"gemminer: train_mode should be a bool, got {type(train_mode).__name__}")
        self.train_mode = train_mode
        self.seed = check_seed(seed, "gemminer")
        self._history: list[dict] = []

    @property
    def history(self) -> list[dict]:
        """Per round of the last call: ``{"round", "seconds", "loss", "skipped_steps"}``."""
        return list(self._history)

    def prepare(self, state: ScoringState) -> None:
        self._history = []
        with torch.no_grad():
            if self.init == "signed_constant":
                gain = nn.init.calculate_gain("relu")
                for p in state.params:
                    if p.dim() >= 2:
                        fan_in = nn.init._calculate_correct_fan(p, "fan_in")
                        p.copy_(p.sign() * (gain / math.sqrt(fan_in)))
            if self.batchnorm == "non_affine":
                for m in state.model.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                        m.weight.fill_(1.0)
                        m.bias.zero_()
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        dtype = lambda p: p.dtype if p.is_floating_point() else torch.float32  # noqa: E731
        # Drawn on the CPU so that a seed gives the same scores on every device.
        state.cache["scores"] = [
            torch.rand(p.shape, generator=generator, dtype=torch.float64).to(device=p.device, dtype=dtype(p))
            .requires_grad_(True) for p in state.params
        ]

    def _optimizer(self, state: ScoringState) -> tuple[torch.optim.Optimizer, Any]:
        if "optimizer" not in state.cache:
            scores = state.cache["scores"]
            if self.optimizer == "sgd":
                opt = torch.optim.SGD(scores, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
            else:
                opt = torch.optim.Adam(scores, lr=self.lr, weight_decay=self.weight_decay)
            total = self.epochs * max(1, state.rounds)
            schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
                        if self.lr_schedule == "cosine" else None)
            state.cache["optimizer"] = (opt, schedule)
        return state.cache["optimizer"]

    def score(self, state: ScoringState) -> list[torch.Tensor]:
        scores = state.cache["scores"]
        opt, schedule = self._optimizer(state)
        modules = [state.model.get_submodule(t.module_name) for t in state.targets]
        names = [t.name for t in state.targets]
        weights = [p.detach() for p in state.params]
        start, losses, skipped, steps = time.perf_counter(), [], 0, 0
        mode = state.model.training
        state.model.train(self.train_mode)
        epochs = tqdm(range(self.epochs), desc=f"{self.name} round {state.round + 1}/{state.rounds}", unit="epoch",
                      leave=False, disable=(not state.progress) if state.progress is not None else None)
        try:
            for _ in epochs:
                for inputs, labels in state.inputs.batches(self.name):
                    with torch.no_grad():
                        for s in scores:
                            s.clamp_(0.0, 1.0)
                    inputs, labels = to_device(inputs, state.device), to_device(labels, state.device)
                    masked = [w * straight_through_mask(s, self.threshold) for w, s in zip(weights, scores)]
                    with _masked_weights(modules, names, masked):
                        output = state.inputs.call(state.model, inputs, "a batch of data")
                    loss = state.inputs.loss(output, labels)
                    if self.lmbda:
                        loss = loss + self.lmbda * sum((s * s).sum() for s in scores)
                    grads = torch.autograd.grad(loss, scores, allow_unused=True)
                    steps += 1
                    if not math.isfinite(float(loss.detach())) or not all(
                            g is None or bool(torch.isfinite(g).all()) for g in grads):
                        skipped += 1  # an overflow in the forward: this step would write NaN into the scores
                        continue
                    for s, g in zip(scores, grads):
                        s.grad = g
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    losses.append(float(loss.detach()))
                if schedule is not None:
                    schedule.step()
        finally:
            state.model.train(mode)
        with torch.no_grad():
            for s in scores:
                s.clamp_(0.0, 1.0)
        seconds = time.perf_counter() - start
        entry = {"round": state.round, "seconds": seconds, "loss": sum(losses) / len(losses) if losses else math.nan,
                 "skipped_steps": skipped}
        self._history.append(entry)
        _logger.info("gemminer: round %d/%d took %.2f s (mean loss %.4g, %d steps)", state.round + 1, state.rounds,
                     seconds, entry["loss"], steps)
        if skipped:
            warnings.warn(
                f"gemminer: {skipped} of {steps} score-training steps of round {state.round + 1} gave a non-finite "
                "loss or gradient (the model's forward overflowed in its dtype) and were skipped; "
                + ("the scores of this round are those of the previous one." if skipped == steps else
                   "the other steps trained the scores.")
                + " Check for layers scaled far from unit size.",
                GemMinerWarning, stacklevel=4,
            )
        return [s.detach().clone() for s in scores]
