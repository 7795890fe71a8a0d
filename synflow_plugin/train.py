"""A small CPU training loop for the accuracy experiments (``synflow-plugin train``, the demo).

Pruned models keep their ``torch.nn.utils.prune`` reparametrisation while they train:
the forward uses ``weight_orig * weight_mask``, so a pruned weight gets no gradient
and stays pruned; nothing else is needed. The loop is deliberately plain (Adam, a
cosine learning-rate schedule, cross-entropy) so that differences in accuracy come
from the masks, not from the training recipe.

>>> import torch
>>> from torch.utils.data import TensorDataset
>>> from synflow_plugin.models import create_model
>>> data = TensorDataset(torch.randn(64, 1, 40), torch.randint(0, 10, (64,)))
>>> model = create_model("mlp", input_shape=(1, 40), depth=2, width=16)
>>> result = train_model(model, data, data, epochs=1, batch_size=32, seed=0)
>>> 0.0 <= result.test_accuracy <= 1.0, len(result.history)
(True, 1)
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from synflow_plugin.data import make_loader
from synflow_plugin.errors import PruningError, PruningTypeError

__all__ = ["TrainResult", "train_model", "evaluate", "OPTIMIZERS"]

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainResult:
    """What :func:`train_model` measured.

    Attributes:
        test_accuracy: top-1 accuracy on the test set after the last epoch, in [0, 1].
        test_loss: mean cross-entropy on the test set after the last epoch.
        train_loss: mean training loss of the last epoch.
        seconds: wall time of the training, evaluation included.
        history: per epoch ``{"epoch", "train_loss", "test_loss", "test_accuracy"}``
            (test metrics only where evaluated).
        settings: the optimiser settings used.
    """

    test_accuracy: float
    test_loss: float
    train_loss: float
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive(value: Any, name: str, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise PruningTypeError(f"train_model(): {name}={value!r} should be a {kind.__name__}")
    if value <= 0:
        raise PruningError(f"train_model(): {name}={value!r} should be positive")


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 1000,
             loss_fn: Callable | None = None) -> tuple[float, float]:
    """``(accuracy, mean loss)`` of ``model`` on ``dataset``, in eval mode (the mode is restored)."""
    was_training = model.training
    model.eval()
    correct, total, loss_sum = 0, 0, 0.0
    loss_fn = loss_fn or F.cross_entropy
    device = next(model.parameters()).device
    try:
        for inputs, targets in make_loader(dataset, batch_size=batch_size):
            inputs, targets = inputs.to(device), targets.to(device)
            logits = model(inputs)
            loss_sum += float(loss_fn(logits, targets)) * len(targets)
            correct += int((logits.argmax(1) == targets).sum())
            total += len(targets)
    finally:
        model.train(was_training)
    if total == 0:
        raise PruningError("evaluate(): the dataset is empty")
    return correct / total, loss_sum / total


def train_model(
    model: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    seed: int = 0,
    eval_every: int | None = None,
    progress: bool | None = None,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``train_set`` and report its test accuracy.

    Args:
        model: the network, pruned or not (masks stay fixed while training).
        train_set, test_set: map-style datasets of ``(input, label)`` pairs.
        epochs: passes over ``train_set``.
        batch_size: samples per step.
        lr: initial learning rate, annealed to 0 on a cosine schedule.
        optimizer: ``"adam"`` or ``"sgd"`` (with ``momentum``, Nesterov).
        weight_decay: L2 penalty of the optimiser.
        seed: seed of the data order (the model's initialisation is the caller's).
        eval_every: evaluate the test set every that many epochs (default: only at the end).
        progress: tqdm bar over epochs (``None``: only on a terminal).
        desc: the bar's label.

    Returns:
        A :class:`TrainResult`.
    """
    _positive(epochs, "epochs")
    _positive(batch_size, "batch_size")
    _positive(lr, "lr", float)
    if optimizer not in OPTIMIZERS:
        raise PruningError(f"train_model(): optimizer={optimizer!r} is not valid; expected one of {OPTIMIZERS}")
    if eval_every is not None:
        _positive(eval_every, "eval_every")
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 0.5 * (1 + math.cos(math.pi * e / epochs)))
    loader = make_loader(train_set, batch_size=batch_size, shuffle=True, seed=seed)
    device = next(model.parameters()).device

    start = time.perf_counter()
    history: list[dict[str, float]] = []
    train_loss = float("nan")
    bar = tqdm(range(epochs), desc=desc, unit="epoch", leave=False,
               disable=(not progress) if progress is not None else None)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(device), targets.to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(targets)
            count += len(targets)
        schedule.step()
        train_loss = total / max(count, 1)
        row = {"epoch": epoch + 1, "train_loss": train_loss}
        if eval_every is not None and (epoch + 1) % eval_every == 0 and epoch + 1 < epochs:
            row["test_accuracy"], row["test_loss"] = evaluate(model, test_set)
        history.append(row)
        bar.set_postfix(loss=f"{train_loss:.3f}")
    accuracy, test_loss = evaluate(model, test_set)
    history[-1].update(test_accuracy=accuracy, test_loss=test_loss)
    diverged = [name for name, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if diverged or not math.isfinite(train_loss):
        warnings.warn(
            f"train_model(): the training diverged (train loss {train_loss:.3g}"
            + (f"; {', '.join(repr(n) for n in diverged[:5])}{', ...' if len(diverged) > 5 else ''} "
               f"{'holds' if len(diverged) == 1 else 'hold'} NaN or infinite values" if diverged else "")
            + f"): the accuracy {accuracy:.2%} is that of a broken model. Train again with a smaller lr "
            f"(lr={lr:g}).", RuntimeWarning, stacklevel=2)
    return TrainResult(
        test_accuracy=accuracy, test_loss=test_loss, train_loss=train_loss,
        seconds=time.perf_counter() - start, history=history,
        settings=dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      weight_decay=weight_decay, seed=seed, schedule="cosine"),
    )
