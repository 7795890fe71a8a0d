"""Scores to masks: exact counts, ties, schedules, budgets, revival, the deep-MLP overflow case."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from synflow_plugin import PruningError, ZeroFlowWarning, compute_masks, compute_scores, prunable_parameters
from synflow_plugin.criteria import CRITERIA, Criterion, register_criterion
from synflow_plugin.masking import drop_smallest, erk_allocation, keep_schedule
from synflow_plugin.models import create_model


def test_drop_smallest_exact_with_ties_and_earliest_first():
    values = np.array([3.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    drop = drop_smallest(values, 2)
    assert drop.tolist() == [False, True, True, False, False, False]
    assert drop_smallest(values, 0).sum() == 0 and drop_smallest(values, 6).all()


@pytest.mark.parametrize("n,count", [(1_000_000, 1), (1_000_000, 123_457), (700_000, 699_999)])
def test_drop_smallest_large_matches_sort(n, count):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(n).astype(np.float32)
    values[:1000] = values[5000]  # a block of ties
    drop = drop_smallest(values, count)
    assert drop.sum() == count
    order = np.argsort(values, kind="stable")
    assert np.array_equal(np.flatnonzero(drop), np.sort(order[:count]))


def test_drop_smallest_all_equal_large():
    values = np.zeros(400_000, dtype=np.float32)
    drop = drop_smallest(values, 1234)
    assert drop.sum() == 1234 and drop[:1234].all()


def test_keep_schedule_exponential_and_linear():
    assert keep_schedule(1000, 10, 2) == [100, 10]
    assert keep_schedule(1000, 10, 1) == [10]
    assert keep_schedule(100, 0, 4, "linear") == [75, 50, 25, 0]
    expo = keep_schedule(10**6, 10**3, 100)
    assert expo[-1] == 1000 and all(a >= b for a, b in zip(expo, expo[1:]))
    ratios = [b / a for a, b in zip(expo[:-1], expo[1:])]
    assert max(ratios) - min(ratios) < 1e-2  # the same fraction per round
    with pytest.raises(PruningError, match="schedule='cosine'"):
        keep_schedule(10, 1, 2, "cosine")


def test_erk_allocation_sums_exactly_and_keeps_small_layers_dense():
    shapes = [torch.Size([16, 3, 3, 3]), torch.Size([64, 16, 3, 3]), torch.Size([10, 64])]
    sizes = [s.numel() for s in shapes]
    budgets = erk_allocation(shapes, sizes, keep=2000)
    assert sum(budgets) == 2000
    densities = [b / n for b, n in zip(budgets, sizes)]
    assert densities[0] > densities[1]  # the small first layer keeps more
    assert all(0 <= b <= n for b, n in zip(budgets, sizes))
    assert erk_allocation(shapes, sizes, keep=sum(sizes) - 5) == [sizes[0], sizes[1] - 5, sizes[2]] or \
        sum(erk_allocation(shapes, sizes, keep=sum(sizes) - 5)) == sum(sizes) - 5


def tied_model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.fill_(0.5)
    return model


@pytest.mark.parametrize("criterion", ["magnitude", "synflow"])
def test_exact_counts_with_ties(criterion):
    # Every score ties: the published code's `score <= threshold` would prune all of them.
    model = tied_model()
    masks = compute_masks(model, prunable_parameters(model), criterion, amount=0.37,
                          example_inputs=torch.ones(1, 10), iterations=3)
    assert sum(int(m.sum()) for m in masks) == 200 - 74


@pytest.mark.parametrize("amount,kept", [(0.0, 200), (1.0, 0), (17, 183), (200, 0)])
def test_amount_edge_values(amount, kept):
    model = tied_model()
    masks = compute_masks(model, prunable_parameters(model), "magnitude", amount=amount)
    assert sum(int(m.sum()) for m in masks) == kept


def test_local_scope_prunes_each_layer_by_the_same_fraction():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, input_shape=(20,), depth=3, width=30)
    masks = compute_masks(model, prunable_parameters(model), "synflow", amount=0.8,
                          example_inputs=torch.randn(1, 20), scope="local", iterations=5)
    for mask in masks:
        assert int(mask.sum()) == mask.numel() - round(0.8 * mask.numel())
    uniform = compute_masks(model, prunable_parameters(model), "random", amount=0.8, scope="uniform", seed=0)
    assert [int(m.sum()) for m in uniform] == [int(m.sum()) for m in masks]


def test_erk_scope_random():
    torch.manual_seed(0)
    model = create_model("conv", num_classes=10, input_shape=(3, 8, 8), depth=3, width=16)
    masks = compute_masks(model, prunable_parameters(model), "random", amount=0.9, scope="erk", seed=0)
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == total - round(0.9 * total)
    densities = [m.float().mean().item() for m in masks]
    assert densities[0] > densities[1]


def test_global_synflow_prunes_the_widest_layer_hardest_but_collapses_none():
    torch.manual_seed(0)
    model = create_model("vgg11_bn", num_classes=10, width_multiplier=0.125)
    params = prunable_parameters(model)
    masks = compute_masks(model, params, "synflow", amount=0.995, example_inputs=torch.randn(1, 3, 32, 32),
                          iterations=30)
    remaining = [int(m.sum()) for m in masks]
    assert sum(remaining) == sum(m.numel() for m in masks) - round(0.995 * sum(m.numel() for m in masks))
    assert min(remaining) > 0
    # Magnitude at the same compression collapses a layer.
    magnitude = compute_masks(model, params, "magnitude", amount=0.995)
    assert min(int(m.sum()) for m in magnitude) == 0


def test_deep_mlp_float32_no_overflow():
    # R grows like ~18^depth: 10^125 here, far beyond float32 (the published code returns inf).
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=10, input_shape=(256,), depth=100, width=256)
    assert next(model.parameters()).dtype == torch.float32
    params = prunable_parameters(model)
    scores = compute_scores(model, params, "synflow", example_inputs=torch.randn(1, 256))
    assert all(torch.isfinite(s).all() for s in scores)
    assert all(s.sum() > 0 for s in scores)
    masks = compute_masks(model, params, "synflow", amount=0.99, example_inputs=torch.randn(1, 256),
                          iterations=10)
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == total - round(0.99 * total)
    assert min(int(m.sum()) for m in masks) > 0
    assert next(model.parameters()).dtype == torch.float32


class FlipFlop(Criterion):
    """Prefers the first half of the weights in round 0 and the second half afterwards."""

    name = "flipflop-test"
    default_iterations = 2

    def score(self, state):
        scores = []
        for p in state.params:
            s = torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape)
            scores.append(-s if state.round == 0 else s)
        return scores


class RevivingFlipFlop(FlipFlop):
    name = "revive-test"
    revives = True


@pytest.fixture
def flipflops():
    register_criterion(FlipFlop)
    register_criterion(RevivingFlipFlop)
    yield
    CRITERIA.pop("flipflop-test")
    CRITERIA.pop("revive-test")


def test_only_reviving_criteria_bring_weights_back(flipflops):
    model = nn.Sequential(nn.Linear(10, 1, bias=False))
    params = prunable_parameters(model)
    # keep 10 -> ~3.2 -> 1 ... use a linear schedule: keep 6 then 2.
    kept = compute_masks(model, params, "flipflop-test", amount=8, schedule="linear")[0].reshape(-1)
    # Round 0 keeps the first 6 (largest -index), round 1 keeps the last 2 of those survivors.
    assert torch.nonzero(kept).reshape(-1).tolist() == [4, 5]
    revived = compute_masks(model, params, "revive-test", amount=8, schedule="linear")[0].reshape(-1)
    # Round 1 ranks every weight of the call again: the last two, pruned in round 0, come back.
    assert torch.nonzero(revived).reshape(-1).tolist() == [8, 9]


def test_force_never_revives_weights_pruned_before_the_call():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(6,), depth=2, width=8)
    params = prunable_parameters(model)
    before = torch.rand(8, 6) > 0.5
    torch.nn.utils.prune.custom_from_mask(model.layers[0] if hasattr(model, "layers") else params[0][0],
                                          "weight", before)
    data = [(torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1]))]
    masks = compute_masks(model, prunable_parameters(model), "force", amount=0.5, data=data, iterations=4)
    assert not (masks[0] & ~before).any()


def test_zero_flow_warning_names_the_layer_and_batchnorm_identity_fixes_it():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10, width_multiplier=0.25, zero_init_residual=True)
    params = prunable_parameters(model)
    with pytest.warns(ZeroFlowWarning, match=r"conv2\.weight.*batchnorm='identity'"):
        compute_masks(model, params, "synflow", amount=0.5, example_inputs=torch.randn(1, 3, 32, 32),
                      iterations=1)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ZeroFlowWarning)
        masks = compute_masks(model, params, "synflow", amount=0.5, example_inputs=torch.randn(1, 3, 32, 32),
                              iterations=2, batchnorm="identity")
    assert min(int(m.sum()) for m in masks) > 0


def test_one_shot_iterator_data_is_read_once_for_iterative_criteria():
    torch.manual_seed(0)
    model = create_model("mlp", num_classes=3, input_shape=(6,), depth=2, width=8)
    batches = [(torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])) for _ in range(2)]
    from_list = compute_masks(model, prunable_parameters(model), "itersnip", amount=0.7, data=batches, iterations=3)
    from_iter = compute_masks(model, prunable_parameters(model), "itersnip", amount=0.7, data=iter(batches),
                              iterations=3)
    assert all(torch.equal(a, b) for a, b in zip(from_list, from_iter))
    first_only = compute_masks(model, prunable_parameters(model), "snip", amount=0.7, data=batches, num_batches=1)
    single = compute_masks(model, prunable_parameters(model), "snip", amount=0.7, data=batches[:1])
    assert all(torch.equal(a, b) for a, b in zip(first_only, single))


def test_channels_last_weights_are_pruned_like_contiguous_ones():
    torch.manual_seed(0)
    model = create_model("conv", num_classes=4, input_shape=(3, 8, 8), depth=3, width=8)
    twin = create_model("conv", num_classes=4, input_shape=(3, 8, 8), depth=3, width=8)
    twin.load_state_dict(model.state_dict())
    twin = twin.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 8, 8)
    a = compute_masks(model, prunable_parameters(model), "synflow", 0.9, example_inputs=x, iterations=5)
    b = compute_masks(twin, prunable_parameters(twin), "synflow", 0.9, example_inputs=x, iterations=5)
    assert all(torch.equal(m, n) for m, n in zip(a, b))
