"""The sanity checks of Frankle et al. (ICLR 2021): shuffling, re-initialisation, inversion."""

import math

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import PruningError, PruningTypeError, compute_masks, compute_scores, prunable_parameters
from synflow_plugin.criteria import Criterion, get_criterion
from synflow_plugin.sanity import (
    InvertedCriterion,
    inverted,
    reinitialize_,
    shuffle_masks,
    shuffle_masks_,
)


class FixedScores(Criterion):
    """Scores given by hand (not registered), to check inversion on negative values."""

    name = "fixed"

    def __init__(self, scores):
        self.scores = scores

    def score(self, state):
        return [s.clone() for s in self.scores]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def _pruned(seed=0, amount=0.7):
    model = _net(seed)
    prune.global_unstructured(prunable_parameters(model), pruning_method=prune.L1Unstructured, amount=amount)
    return model


# --------------------------------------------------------------------------- inversion
def test_inverted_magnitude_keeps_the_smallest_weights_by_hand():
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -4.0], [2.0, 3.0]]))
    model = nn.Sequential(layer)
    kept = compute_masks(model, [(layer, "weight")], "magnitude", 0.5)[0]
    low = compute_masks(model, [(layer, "weight")], inverted("magnitude"), 0.5)[0]
    assert kept.tolist() == [[False, True], [False, True]]
    assert low.tolist() == [[True, False], [True, False]]


def test_inversion_reverses_negative_scores_exactly():
    # GraSP scores can be negative: -score reverses the ranking; v / v**2 (the published
    # code) would keep -3 and -1 in the wrong order and turn 0 into NaN.
    layer = nn.Linear(5, 1, bias=False)
    model = nn.Sequential(layer)
    scores = [torch.tensor([[-3.0, -1.0, 2.0, 0.5, 0.0]])]
    plain = compute_masks(model, [(layer, "weight")], FixedScores(scores), 3)[0]
    low = compute_masks(model, [(layer, "weight")], InvertedCriterion(FixedScores(scores)), 3)[0]
    assert plain.tolist() == [[False, False, True, True, False]]
    assert low.tolist() == [[True, True, False, False, False]]


def test_inverted_scores_are_the_negated_scores():
    model = _net()
    params = prunable_parameters(model)
    x = torch.ones(1, 6)
    base = compute_scores(model, params, "synflow", example_inputs=x)
    neg = compute_scores(model, params, inverted("synflow"), example_inputs=x)
    for a, b in zip(base, neg):
        torch.testing.assert_close(b, -a, rtol=0, atol=0)


def test_iterative_inversion_with_zero_scores_gives_no_nan():
    model = _net()
    with torch.no_grad():
        model[2].weight[:4] = 0  # four dead neurons: their SynFlow scores are exactly 0
    params = prunable_parameters(model)
    masks = compute_masks(model, params, inverted("synflow"), 0.9, example_inputs=torch.ones(1, 6),
                          iterations=5)
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == total - round(0.9 * total)


def test_inverted_criterion_carries_the_contract():
    snip = inverted("snip")
    assert (snip.needs_data, snip.default_iterations, snip.name) == (True, 1, "inverted-snip")
    assert inverted("synflow").default_iterations == 100
    assert inverted("force").revives is True
    assert repr(inverted("grasp", temperature=100)) == "InvertedCriterion(GraSPCriterion(temperature=100.0))"
    model = _net()
    with pytest.raises(PruningError, match="data-driven"):
        compute_masks(model, prunable_parameters(model), snip, 0.5)


def test_inverted_criterion_carries_the_capabilities_callers_read():
    # the command line and the demo hand a criterion what these say it needs, never by its name
    assert inverted("synflow").needs_example_inputs and not inverted("snip").needs_example_inputs
    assert inverted("random", seed=0).seeded and not inverted("magnitude").seeded
    assert inverted("synflow").wide_range and not inverted("magnitude").wide_range
    assert inverted("force").summary == "the lowest-scoring weights of force kept (sanity check)"
    model = _net()
    params = prunable_parameters(model)
    plain = compute_masks(model, params, "random", 0.5, seed=3)
    flipped = compute_masks(model, params, inverted("random", seed=3), 0.5)
    assert all(not (p & f).any() for p, f in zip(plain, flipped))  # the same draw, ranked the other way


def test_inverted_rejects_bad_input():
    with pytest.raises(PruningTypeError, match="Criterion instance"):
        InvertedCriterion("synflow")
    with pytest.raises(PruningError, match="original back"):
        InvertedCriterion(inverted("synflow"))
    with pytest.raises(PruningError, match="expected one of"):
        inverted("synflw")


def test_one_shot_inverted_and_plain_masks_are_disjoint():
    model = _net()
    params = prunable_parameters(model)
    x = torch.ones(1, 6)
    a = compute_masks(model, params, "synflow", 0.8, example_inputs=x, iterations=1)
    b = compute_masks(model, params, get_criterion("synflow"), 0.8, example_inputs=x, iterations=1)
    c = compute_masks(model, params, inverted("synflow"), 0.8, example_inputs=x, iterations=1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    overlap = sum(int((u & w).sum()) for u, w in zip(a, c))
    assert overlap == 0  # one shot: the top 20% and the bottom 20% of one ranking are disjoint


# --------------------------------------------------------------------------- shuffling
def test_shuffle_masks_keeps_each_layers_count_and_moves_weights():
    masks = [torch.rand(20, 30) < 0.1, torch.rand(50) < 0.5, torch.ones(4, dtype=torch.bool)]
    out = shuffle_masks(masks, seed=0)
    assert [int(m.sum()) for m in out] == [int(m.sum()) for m in masks]
    assert [m.shape for m in out] == [m.shape for m in masks]
    assert [m.dtype for m in out] == [m.dtype for m in masks]
    assert not torch.equal(out[0], masks[0]) and not torch.equal(out[1], masks[1])
    again = shuffle_masks(masks, seed=0)
    assert all(torch.equal(u, v) for u, v in zip(out, again))
    other = shuffle_masks(masks, seed=1)
    assert not torch.equal(out[0], other[0])


def test_shuffle_masks_in_place_changes_the_buffers():
    # The published SynFlow code's shuffle rebinds a local name and changes nothing; here
    # the model's own masks move, and the masked weights follow.
    model = _pruned()
    before = {n: b.clone() for n, b in model.named_buffers()}
    shuffle_masks_(model, seed=3)
    after = dict(model.named_buffers())
    for name in before:
        assert int(after[name].sum()) == int(before[name].sum())
        assert after[name].dtype == before[name].dtype
    assert any(not torch.equal(before[n], after[n]) for n in before)
    for module, _ in prunable_parameters(model):
        torch.testing.assert_close(module.weight, module.weight_orig * module.weight_mask)
    x = torch.randn(4, 6)
    out = model(x)  # prune's hook recomputes the same weights
    assert out.shape == (4, 3) and torch.isfinite(out).all()


def test_shuffle_needs_a_pruned_model():
    with pytest.raises(PruningError, match="no tensor of the model is pruned"):
        shuffle_masks_(_net())
    with pytest.raises(PruningError, match="non-negative int"):
        shuffle_masks([torch.ones(3)], seed=-1)


# --------------------------------------------------------------------------- re-initialisation
def test_reinitialize_keeps_masks_and_redraws_weights():
    model = _pruned()
    masks = {n: b.clone() for n, b in model.named_buffers()}
    origs = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("weight_orig")}
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith("bias")}
    reinitialize_(model, seed=0)
    for name, mask in model.named_buffers():
        assert torch.equal(mask, masks[name])
    for name, p in model.named_parameters():
        if name in origs:
            assert not torch.equal(p, origs[name])
        if name in biases:
            assert torch.equal(p, biases[name])
    for module, _ in prunable_parameters(model):
        assert bool((module.weight[module.weight_mask == 0] == 0).all())
        torch.testing.assert_close(module.weight, module.weight_orig * module.weight_mask)


def test_reinitialize_is_kaiming_normal_and_seeded():
    layer = nn.Linear(400, 300)
    model = nn.Sequential(layer)
    reinitialize_(model, seed=5)
    first = layer.weight.detach().clone()
    std = float(first.std())
    assert math.isclose(std, math.sqrt(2.0 / 400), rel_tol=0.02)
    assert abs(float(first.mean())) < 0.01 * math.sqrt(2.0 / 400) * 10
    reinitialize_(model, seed=5)
    assert torch.equal(layer.weight, first)
    reinitialize_(model, init=torch.nn.init.zeros_)
    assert not layer.weight.any()


def test_reinitialize_rejects_bad_input():
    with pytest.raises(PruningTypeError, match="callable"):
        reinitialize_(_net(), init="kaiming")
    with pytest.raises(PruningError, match="no conv or linear weight"):
        reinitialize_(nn.Sequential(nn.ReLU()))
