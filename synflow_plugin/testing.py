"""Fuzzing the pruning contract: random networks, every criterion, the invariants checked.

:func:`random_case` draws a small network (an MLP, a CNN or a residual net, with
random depths, widths, biases, BatchNorm, layer scales spanning many orders of
magnitude, and sometimes an earlier ``torch.nn.utils.prune`` mask) and a pruning
request. :func:`check_case` prunes it through :func:`~synflow_plugin.compute_masks`
or ``prune.global_unstructured`` and asserts what every prune must give:

- the exact count: ``survivors - round(amount * survivors)`` weights kept;
- ``min_density``, where the case asks for it: no tensor below its floor;
- no revival: a weight pruned before the call stays pruned;
- nothing lost: every parameter and buffer, mode and ``requires_grad`` flag of the
  model is bit-identical afterwards (through torch.prune only the masks are added);
- for SynFlow, the masks of a float64 twin of the model, however far the flow
  strays from float32's range.

The test suite runs a fixed sample; ``benchmarks/fuzz.py`` runs many more.

>>> import numpy as np
>>> case = random_case(np.random.default_rng(0), "magnitude")
>>> check_case(case).kept == case.expected_kept
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin.adapters.torch_prune import PaIPruningMethod
from synflow_plugin.criteria import get_criterion, list_criteria
from synflow_plugin.masking import compute_masks, num_to_prune
from synflow_plugin.targets import clone_model, current_mask, prunable_parameters

__all__ = ["Case", "Outcome", "random_network", "random_case", "check_case"]

ENTRY_POINTS = ("compute_masks", "global_unstructured")


class _Residual(nn.Module):
    """conv-BN-ReLU-conv-BN plus an identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, batchnorm: bool) -> None:
        super().__init__()
        norm = (lambda c: nn.BatchNorm2d(c)) if batchnorm else (lambda c: nn.Identity())
        self.branch = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=not batchnorm), norm(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=not batchnorm), norm(cout),
        )
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


def random_network(rng: np.random.Generator) -> tuple[nn.Module, tuple[int, ...], int]:
    """A small random network, its input shape (without the batch) and its class count."""
    kind = rng.choice(["mlp", "cnn", "residual"])
    classes = int(rng.integers(2, 6))
    if kind == "mlp":
        widths = [int(w) for w in rng.integers(2, 24, size=int(rng.integers(1, 9)))]
        bias = bool(rng.random() < 0.5)
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:] + [classes]):
            layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
        model: nn.Module = nn.Sequential(*layers[:-1])
        shape: tuple[int, ...] = (widths[0],)
    else:
        batchnorm = bool(rng.random() < 0.5)
        channels = [int(c) for c in rng.integers(2, 8, size=int(rng.integers(1, 4)))]
        layers, cin = [], 3
        for c in channels:
            if kind == "cnn":
                k = int(rng.choice([1, 3]))
                layers += [nn.Conv2d(cin, c, k, padding=k // 2), nn.BatchNorm2d(c) if batchnorm else nn.Identity(),
                           nn.ReLU()]
            else:
                layers.append(_Residual(cin, c, int(rng.choice([1, 2])), batchnorm))
            cin = c
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
        model = nn.Sequential(*layers)
        shape = (3, 8, 8)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)) and rng.random() < 0.3:
                module.weight.mul_(float(10.0 ** rng.uniform(-12, 12)))  # far from unit scale
            if isinstance(module, nn.BatchNorm2d):  # statistics as after some training
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
    return model, shape, classes


@dataclass
class Case:
    """A network and one pruning request for it."""

    model: nn.Module
    criterion: str
    amount: int | float
    entry_point: str
    iterations: int
    kwargs: dict[str, Any]
    expected_kept: int
    pruned_before: list[torch.Tensor] = field(default_factory=list)


@dataclass
class Outcome:
    kept: int
    masks: list[torch.Tensor]


def random_case(rng: np.random.Generator, criterion: str | None = None, entry_point: str | None = None) -> Case:
    """A random network with a random request for ``criterion`` (default: any registered)."""
    seed = int(rng.integers(2**31))
    torch.manual_seed(seed)
    model, shape, classes = random_network(rng)
    if rng.random() < 0.5:
        model.train()
    else:
        model.eval()
    if rng.random() < 0.3:  # an earlier prune of one layer
        first = prunable_parameters(model)[0][0]
        prune.random_unstructured(first, "weight", amount=float(rng.uniform(0.1, 0.6)))
    criterion = criterion or str(rng.choice(list_criteria()))
    params = prunable_parameters(model)
    survivors = sum(int(current_mask(m, n).sum()) for m, n in params)
    amount: int | float = (float(rng.choice([0.0, 0.5, 0.9, 0.99, rng.uniform(0, 1)])) if rng.random() < 0.8
                           else int(rng.integers(0, survivors + 1)))
    kwargs: dict[str, Any] = {}
    if rng.random() < 0.3:  # a floor per tensor, where the request leaves room for it
        min_density = float(rng.choice([0.01, 0.05, 0.2]))
        floors = sum(min(int(current_mask(m, n).sum()), math.ceil(min_density * current_mask(m, n).numel() - 1e-9))
                     for m, n in params)
        if survivors - num_to_prune(amount, survivors) >= floors:
            kwargs["min_density"] = min_density
    needs = get_criterion(criterion)
    if needs.needs_data:
        g = torch.Generator().manual_seed(seed)
        kwargs["data"] = [(torch.randn(4, *shape, generator=g), torch.randint(0, classes, (4,), generator=g))
                          for _ in range(2)]
    else:
        kwargs["example_inputs"] = torch.randn(1, *shape)
    if needs.seeded:
        kwargs["seed"] = seed
    if needs.needs_training:  # a stand-in for the user's training
        kwargs["train_fn"] = _fuzz_train_fn(shape, seed)
    return Case(
        model=model, criterion=criterion, amount=amount,
        entry_point=entry_point or str(rng.choice(ENTRY_POINTS)),
        iterations=int(rng.integers(1, 12)), kwargs=kwargs,
        expected_kept=survivors - num_to_prune(amount, survivors),
        pruned_before=[~current_mask(m, n) for m, n in params],
    )


def _fuzz_train_fn(shape: tuple[int, ...], seed: int):
    """Two clipped SGD steps on random inputs: the weights change, and never diverge."""
    def train_fn(model: nn.Module) -> None:
        g = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        for _ in range(2):
            loss = model(torch.randn(2, *shape, generator=g)).float().pow(2).mean()
            if not torch.isfinite(loss):
                continue
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
    return train_fn


def _state(model: nn.Module) -> dict[str, Any]:
    plain = {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith("_mask")}
    return {
        "state": {k[: -len("_orig")] if k.endswith("_orig") else k: v for k, v in plain.items()},
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    assert before["modes"] == after["modes"], f"{what}: modes changed"
    assert before["requires_grad"] == after["requires_grad"], f"{what}: requires_grad changed"
    assert before["state"].keys() == after["state"].keys(), f"{what}: state keys changed"
    for key, value in before["state"].items():
        other = after["state"][key]
        assert value.dtype == other.dtype and torch.equal(value, other), f"{what}: '{key}' changed"


def _masks(case: Case, model: nn.Module) -> list[torch.Tensor]:
    params = prunable_parameters(model)
    options = dict(case.kwargs, iterations=case.iterations)
    if case.entry_point == "compute_masks":
        return compute_masks(model, params, case.criterion, case.amount, **options)
    method = type("Method", (PaIPruningMethod,), {"criterion": case.criterion})
    prune.global_unstructured(params, pruning_method=method, amount=case.amount, model=model, **options)
    return [current_mask(m, n) for m, n in params]


def check_case(case: Case) -> Outcome:
    """Prune ``case`` and assert the invariants (raises AssertionError naming the broken one)."""
    what = f"{case.criterion} via {case.entry_point}, amount={case.amount}, iterations={case.iterations}"
    model = case.model
    before = _state(model)
    masks = _masks(case, model)
    kept = sum(int(m.sum()) for m in masks)
    assert kept == case.expected_kept, f"{what}: kept {kept}, expected {case.expected_kept}"
    for mask, pruned in zip(masks, case.pruned_before):
        assert not bool((mask & pruned.to(mask.device)).any()), f"{what}: a weight pruned before came back"
        floor = math.ceil(case.kwargs.get("min_density", 0.0) * mask.numel() - 1e-9)
        assert int(mask.sum()) >= min(floor, int((~pruned).sum())), f"{what}: a tensor fell below min_density"
    # Through torch.prune only masks are added: weight_orig holds the weights as they were.
    _assert_same(before, _state(model), what)
    if get_criterion(case.criterion).wide_range and case.entry_point == "compute_masks":
        twin = clone_model(model).double()
        reference = compute_masks(twin, prunable_parameters(twin), case.criterion, case.amount,
                                  **dict(case.kwargs, iterations=case.iterations,
                                         example_inputs=case.kwargs["example_inputs"].double()))
        differ = sum(int((a != b.to(a.device)).sum()) for a, b in zip(masks, reference))
        assert differ == 0, f"{what}: {differ} mask entries differ from the float64 twin's"
    return Outcome(kept, masks)
