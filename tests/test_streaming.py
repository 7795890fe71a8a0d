"""Streamed rounds: each gradient ranked as the backward pass produces it gives the masks
of the rounds that hold every gradient, on every family, and leaves the model as it was."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from synflow_plugin import (SynFlow, ZeroFlowWarning, compute_masks, masking, prunable_parameters, pruning_method,
                            register_criterion, selection, session)
from synflow_plugin.criteria import CRITERIA, GradientCriterion
from synflow_plugin.models import create_model
from synflow_plugin.selection import Survivors

from _families import FAMILIES


class Rounds:
    """What a prune did: its rounds that streamed, and its rounds scored the usual way."""

    def __init__(self):
        self.streamed, self.scored = [], []


def masks(model, x, *, streamed, rounds=None, quiet=True, **kwargs):
    """compute_masks with the gradients streamed (as under memory pressure) or held;
    ``rounds`` (a :class:`Rounds`) records which way each round went; ``quiet``: no
    warnings (collapse at high compression is expected, and the same either way)."""
    rounds = rounds if rounds is not None else Rounds()
    original = masking._available_memory
    masking._available_memory = (lambda: 1) if streamed else (lambda: None)
    streamed_round, scores = masking._Loop._streamed_round, session.ScoringSession.scores

    def counted_round(self, r, before):
        result = streamed_round(self, r, before)
        if result is not None:
            rounds.streamed.append(r)
        return result

    def counted_scores(self):
        rounds.scored.append(self.state.round)
        return scores(self)

    masking._Loop._streamed_round, session.ScoringSession.scores = counted_round, counted_scores
    kwargs.setdefault("iterations", 20)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return compute_masks(model, kwargs.pop("params", prunable_parameters(model)), kwargs.pop("criterion", "synflow"),
                                 kwargs.pop("amount", 0.99), example_inputs=x, **kwargs)
    finally:
        masking._available_memory = original
        masking._Loop._streamed_round, session.ScoringSession.scores = streamed_round, scores


def streams_all(rounds: Rounds, count: int) -> bool:
    return rounds.streamed == list(range(count)) and not rounds.scored


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("scope", ["global", "local", "erk"])
def test_streamed_masks_equal_held_ones_on_a_resnet(scope):
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32), width_multiplier=2.0)
    x = torch.randn(1, 3, 32, 32)
    rounds, passes = Rounds(), []
    stream = session.ScoringSession.stream
    session.ScoringSession.stream = lambda self, take: passes.append(self.state.round) or stream(self, take)
    try:
        streamed = masks(model, x, streamed=True, rounds=rounds, scope=scope)
    finally:
        session.ScoringSession.stream = stream
    assert same(streamed, masks(model, x, streamed=False, scope=scope))
    assert streams_all(rounds, 20)
    assert passes.count(0) == 2  # the first round samples, then scans
    assert len(passes) < 20 + 10  # most later rounds one pass: their bracket was predicted


def test_streamed_masks_equal_held_ones_on_vgg_at_high_compression(monkeypatch):
    monkeypatch.setattr(selection, "_BATCH", 1)  # every target ranked inside the backward pass, as it comes
    torch.manual_seed(1)
    model = create_model("vgg11_bn", num_classes=10, input_shape=(3, 32, 32), width_multiplier=0.5)
    x = torch.randn(1, 3, 32, 32)
    rounds = Rounds()
    assert same(masks(model, x, streamed=True, rounds=rounds, amount=0.999, iterations=40),
                masks(model, x, streamed=False, amount=0.999, iterations=40))
    assert streams_all(rounds, 40)


@pytest.mark.parametrize("family", ["lstm", "transformer", "attention", "conv-transpose", "resnet18", "gpt2"])
def test_streamed_masks_equal_held_ones_on_the_families_users_bring(family):
    if family == "gpt2":
        pytest.importorskip("transformers")
    torch.manual_seed(2)
    spec = FAMILIES[family]
    model = spec.build()
    x = spec.example()
    rounds = Rounds()
    assert same(masks(model, x, streamed=True, rounds=rounds, iterations=10),
                masks(model, x, streamed=False, iterations=10))
    assert streams_all(rounds, 10)


@pytest.mark.filterwarnings("ignore::synflow_plugin.LayerCollapseWarning")
def test_a_target_the_flow_never_reaches_scores_zero_when_streamed():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.spare = nn.Linear(300, 300), nn.Linear(300, 10), nn.Linear(300, 300)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(3)
    model = Unused()
    x = torch.randn(1, 300)
    rounds = Rounds()
    with pytest.warns(ZeroFlowWarning, match="spare.weight"):
        streamed = masks(model, x, streamed=True, rounds=rounds, amount=0.5, iterations=3, quiet=False)
    assert same(streamed, masks(model, x, streamed=False, amount=0.5, iterations=3))
    assert not streamed[2].any() and streams_all(rounds, 3)  # all zero, so pruned first


def test_a_round_whose_flow_leaves_float32_is_scored_again_in_float64_when_streamed():
    torch.manual_seed(4)
    model = nn.Sequential(*[m for _ in range(40) for m in (nn.Linear(64, 64, bias=False), nn.ReLU())])
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(8.0)  # R ~ (8 * 64 * E|w|)^40 overflows float32
    x = torch.randn(1, 64)
    rounds = Rounds()
    streamed = masks(model, x, streamed=True, rounds=rounds, amount=0.9, iterations=5)
    assert same(streamed, masks(model, x, streamed=False, amount=0.9, iterations=5))
    assert streams_all(rounds, 5)  # SynFlow promotes the copy in the first round's objective; it streams on


def test_streaming_leaves_the_model_and_its_gradients_as_they_were():
    torch.manual_seed(5)
    model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    model.train()
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()  # the user's own gradients, mid-training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    rounds = Rounds()
    masks(model, x, streamed=True, rounds=rounds, iterations=3)
    assert streams_all(rounds, 3)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(grads[k], p.grad) for k, p in model.named_parameters())
    assert model.training
    # the hooks lived on the scoring copy only
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


@pytest.mark.filterwarnings("ignore::synflow_plugin.LayerCollapseWarning")
def test_streaming_is_chosen_only_when_the_gradients_would_crowd_memory(monkeypatch):
    torch.manual_seed(6)
    model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    count: list[int] = []
    weights = sum(m.weight.nbytes for m, _ in prunable_parameters(model))
    original = session.ScoringSession.stream
    monkeypatch.setattr(session.ScoringSession, "stream", lambda self, take: count.append(1) or original(self, take))
    assert weights > 0
    monkeypatch.setattr(masking, "_available_memory", lambda: int(weights / masking.STREAM_FRACTION) + 1)
    compute_masks(model, prunable_parameters(model), "synflow", 0.5, example_inputs=x, iterations=2)
    assert not count  # they fit: held, the faster way
    monkeypatch.setattr(masking, "_available_memory", lambda: int(weights / masking.STREAM_FRACTION) - 1)
    compute_masks(model, prunable_parameters(model), "synflow", 0.5, example_inputs=x, iterations=2)
    assert count


class OutputEnergy(GradientCriterion):
    """|θ ⊙ ∂E/∂θ| for the energy E = Σ f(x)² of the model's output on example_inputs."""

    name = "output-energy"
    needs_example_inputs = True
    default_iterations = 4
    times_weight = True
    ranks_magnitude = True

    def objective(self, state):
        return state.model(state.inputs.example_inputs).square().sum()


@pytest.mark.filterwarnings("ignore::synflow_plugin.LayerCollapseWarning")
def test_a_gradient_criterion_written_in_a_test_streams_and_reaches_torch_prune():
    register_criterion(OutputEnergy)
    try:
        torch.manual_seed(7)
        model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
        x = torch.randn(2, 3, 32, 32).requires_grad_()  # the backward pass must not write its .grad
        rounds = Rounds()
        streamed = masks(model, x, streamed=True, rounds=rounds, criterion="output-energy", amount=0.8,
                         iterations=None)
        assert streams_all(rounds, 4) and x.grad is None
        held = masks(model, x, streamed=False, criterion="output-energy", amount=0.8, iterations=None)
        assert same(streamed, held)
        params = prunable_parameters(model)
        prune.global_unstructured(params, pruning_method=pruning_method("output-energy"), amount=0.8, model=model,
                                  example_inputs=x)
        assert same([m.weight_mask.bool() for m, _ in params], held)
    finally:
        CRITERIA.pop("output-energy")


class TinyEnergy(OutputEnergy):
    """OutputEnergy scaled into float32's subnormal range: not a wide-range criterion, so
    its tiny scores are ranked as they are, streamed like any others."""

    name = "tiny-energy"

    def objective(self, state):
        return super().objective(state) * 1e-40


def test_tiny_scores_of_a_criterion_without_wide_range_stream_like_any_others():
    register_criterion(TinyEnergy)
    try:
        torch.manual_seed(10)
        model = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
        x = torch.randn(2, 30)
        rounds = Rounds()
        streamed = masks(model, x, streamed=True, rounds=rounds, criterion="tiny-energy", amount=0.5, iterations=3)
        assert streams_all(rounds, 3)
        assert same(streamed, masks(model, x, streamed=False, criterion="tiny-energy", amount=0.5, iterations=3))
    finally:
        CRITERIA.pop("tiny-energy")


@pytest.mark.filterwarnings("ignore::synflow_plugin.LayerCollapseWarning")
def test_streamed_and_held_synflow_agree_through_torch_prune():
    torch.manual_seed(8)
    model = create_model("resnet20", num_classes=10, input_shape=(3, 32, 32))
    x = torch.randn(1, 3, 32, 32)
    held = masks(model, x, streamed=False, iterations=10, amount=0.9)
    original = masking._available_memory
    masking._available_memory = lambda: 1
    try:
        params = prunable_parameters(model)
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.9, model=model, example_inputs=x,
                                  iterations=10, progress=False)
    finally:
        masking._available_memory = original
    assert same([m.weight_mask.bool() for m, _ in params], held)


# --------------------------------------------------------------------------- the selection
def streamed_rounds(sizes, rounds, monkeypatch, bracket=None):
    """Rounds of new scores per target through prune_streamed and through prune; the
    pruned positions of each, and the passes prune_streamed took."""
    monkeypatch.setattr(selection, "_SAMPLE", 256)  # small tensors still bracket
    monkeypatch.setattr(selection, "_CHUNK", 4096)
    if bracket is not None:
        monkeypatch.setattr(selection._Forecast, "predict", bracket)
    rng = np.random.default_rng(9)
    live = [rng.random(n) < 0.9 for n in sizes]
    streamed, held = Survivors(live), Survivors(live)
    passes, results = [0], []
    for r in range(rounds):
        scores = [np.abs(rng.standard_normal(n)).astype(np.float32) * (0.7 ** r) for n in sizes]
        weights = [np.abs(rng.standard_normal(n)).astype(np.float32) for n in sizes]
        count = sum(streamed.live(t) for t in range(len(sizes))) // 10

        def stream(visit):
            passes[0] += 1
            for t in reversed(range(len(sizes))):  # in backward order
                visit(t, scores[t], weights[t])

        a = streamed.prune_streamed(stream, True, [list(range(len(sizes)))], [count], zero_after=lambda: [None] * len(sizes),
                                    record=[True] * len(sizes), seed=r)
        b = held.prune(scores, weights, True, [list(range(len(sizes)))], [count], zero=[None] * len(sizes),
                       record=[True] * len(sizes), seed=r)
        results.append((a, b))
    return results, passes[0]


def test_streamed_selection_is_exact_and_one_pass_a_round_once_predicted(monkeypatch):
    results, passes = streamed_rounds([5000, 300, 9000], 8, monkeypatch)
    for a, b in results:
        assert all(np.array_equal(x, y) for x, y in zip(a.pruned, b.pruned))
    assert passes <= 8 + 1 + 2  # the first round twice; the odd miss


def test_streamed_selection_stays_exact_when_every_prediction_misses(monkeypatch):
    results, passes = streamed_rounds([5000, 300, 9000], 6, monkeypatch,
                                      bracket=lambda self, count, live: (50.0, 60.0))  # above every score
    for a, b in results:
        assert all(np.array_equal(x, y) for x, y in zip(a.pruned, b.pruned))
    assert passes == 2 + 5 * 2  # every later round is scored again with its own sample's bracket


@pytest.mark.parametrize("nan_in", [0, 1], ids=["large group", "small group"])
def test_a_streamed_round_with_a_nan_score_prunes_nothing(nan_in, monkeypatch):
    # Two groups: a large one, bracketed from a sample, and a small one ranked whole.
    monkeypatch.setattr(selection, "_SAMPLE", 16)
    alive = Survivors([np.ones(1000, bool), np.ones(40, bool)])
    scores = [np.arange(1000, dtype=np.float64), np.arange(40, dtype=np.float64)]
    scores[nan_in][7] = math.nan

    def stream(visit):
        for t in (1, 0):
            visit(t, scores[t], None)

    result = alive.prune_streamed(stream, False, [[0], [1]], [100, 4], zero_after=lambda: [None, None],
                                  record=[True, True], hold_outside=True)
    assert result.held and result.nan[nan_in] == 1
    assert alive.live(0) == 1000 and alive.live(1) == 40


def test_a_streamed_group_with_nothing_to_prune_is_done_in_one_pass(monkeypatch):
    monkeypatch.setattr(selection, "_SAMPLE", 16)
    alive = Survivors([np.ones(1000, bool)])
    passes = []

    def stream(visit):
        passes.append(1)
        visit(0, np.arange(1000, dtype=np.float64), None)

    for count in (0, -3):  # nothing, or less than nothing (a schedule that would grow back)
        result = alive.prune_streamed(stream, False, [[0]], [count], zero_after=lambda: [None], record=[True])
        assert not result.held and result.pruned[0].size == 0
    assert len(passes) == 2


def test_a_container_limit_below_the_free_memory_is_what_is_available(tmp_path, monkeypatch):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000\n")
    usage.write_text("400000\n")
    monkeypatch.setattr(masking, "_CGROUP_FILES", ((str(limit), str(usage)),))
    assert masking._available_memory() == 600000
    limit.write_text("max\n")  # no limit: the system's own figure
    assert masking._available_memory() > 600000
