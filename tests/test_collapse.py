"""A prune that empties a layer says so, in every host, and tells a cut network from a cut branch."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import Magnitude, compute_masks, prunable_parameters
from synflow_plugin.collapse import LayerCollapseWarning


def mlp_with_a_small_layer(seed=0):
    """Three layers; the middle one's weights are 1000x smaller, so magnitude pruning
    removes them first and cuts the network."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    return model


class Residual(nn.Module):
    """x + branch(x): emptying the branch leaves the shortcut."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.branch = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.head = nn.Linear(8, 3)
        with torch.no_grad():
            for layer in (self.branch[0], self.branch[2]):
                layer.weight.mul_(1e-3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(h + self.branch(h))


def collapse_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, LayerCollapseWarning)]


def test_emptying_a_layer_of_a_plain_net_warns_that_the_network_is_disconnected():
    model = mlp_with_a_small_layer()
    with pytest.warns(LayerCollapseWarning) as record:
        masks = compute_masks(model, prunable_parameters(model), "magnitude", 64, example_inputs=torch.randn(1, 6))
    assert not masks[1].any()
    (message,) = collapse_warnings(record)
    assert "'2.weight' (no weight left)" in message and "disconnected" in message and "min_density" in message
    with pytest.warns(LayerCollapseWarning, match="not checked: that needs a floating-point example_inputs"):
        compute_masks(model, prunable_parameters(model), "magnitude", 64)  # no input to run the model on


def test_emptying_a_branch_warns_that_only_a_branch_was_removed():
    torch.manual_seed(0)
    model = Residual()
    with pytest.warns(LayerCollapseWarning) as record:
        compute_masks(model, prunable_parameters(model), "magnitude", 128, example_inputs=torch.randn(1, 6))
    (message,) = collapse_warnings(record)
    assert "'branch.0.weight' (no weight left)" in message and "'branch.2.weight'" in message
    assert "only a branch was removed" in message


def test_torch_prune_path_warns_too_and_a_healthy_prune_is_silent():
    model = mlp_with_a_small_layer()
    with pytest.warns(LayerCollapseWarning, match="disconnected"):
        prune.global_unstructured(prunable_parameters(model), pruning_method=Magnitude, amount=64, model=model,
                                  example_inputs=torch.randn(1, 6))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        masks = compute_masks(model, prunable_parameters(model), "synflow", 0.9, example_inputs=torch.randn(1, 6))
    assert all(m.any() for m in masks) and collapse_warnings(record) == []


def test_nni_pruners_warn_for_emptied_tensors_and_single_channels():
    pytest.importorskip("nni")
    from synflow_plugin.nni import MagnitudePruner

    model = mlp_with_a_small_layer()
    config = [{"op_types": ["Linear"], "sparse_ratio": 64 / 136, "global_group_id": 0}]
    with pytest.warns(LayerCollapseWarning, match="'2.weight' \\(no weight left\\)"):
        MagnitudePruner(model, config).compress()

    model = mlp_with_a_small_layer()
    config = [{"op_names": ["2"], "sparse_ratio": 7 / 8, "granularity": "out_channel"}]
    with pytest.warns(LayerCollapseWarning, match="'2.weight' \\(one output channel of 8 left\\)"):
        MagnitudePruner(model, config).compress()


# --------------------------------------------------------------------------- min_density
@pytest.mark.parametrize("criterion", ["magnitude", "synflow", "snip"])
def test_min_density_keeps_a_share_of_every_tensor_and_the_count_exact(criterion):
    model = mlp_with_a_small_layer()
    params = prunable_parameters(model)
    kwargs = {"example_inputs": torch.randn(1, 6)} if criterion == "synflow" else (
        {"data": [(torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))]} if criterion == "snip" else {})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        masks = compute_masks(model, params, criterion, 100, min_density=0.1, **kwargs)
    assert sum(int(m.sum()) for m in masks) == 136 - 100
    assert [int(m.sum()) >= -(-m.numel() // 10) for m in masks] == [True] * 3  # ceil(10%) of each kept
    assert collapse_warnings(record) == []


def test_min_density_through_torch_prune_and_when_it_cannot_be_met():
    from synflow_plugin import PruningError

    model = mlp_with_a_small_layer()
    prune.global_unstructured(prunable_parameters(model), pruning_method=Magnitude, amount=64, model=model,
                              min_density=0.25)
    kept = [int(m.weight_mask.sum()) for m, _ in prunable_parameters(model)]
    assert sum(kept) == 136 - 64 and kept[1] >= 16
    model = mlp_with_a_small_layer()
    with pytest.raises(PruningError, match=r"min_density=0.5 keeps at least 68, so only 68 can go"):
        compute_masks(model, prunable_parameters(model), "magnitude", 100, min_density=0.5)
    with pytest.raises(PruningError, match=r"scope='local' prunes 43 of the 48 weights of '0.weight'"):
        model = mlp_with_a_small_layer()
        compute_masks(model, prunable_parameters(model), "magnitude", 0.9, scope="local", min_density=0.2)
    with pytest.raises(PruningError, match=r"min_density=1.5 should be a float in \[0, 1\]"):
        model = mlp_with_a_small_layer()
        compute_masks(model, prunable_parameters(model), "magnitude", 0.9, min_density=1.5)


@pytest.mark.parametrize("criterion", ["synflow", "magnitude"])
def test_bounded_ranking_on_the_kernels_equals_the_unit_ranking(criterion, monkeypatch):
    from synflow_plugin import masking
    from synflow_plugin.models import create_model

    def masks():
        torch.manual_seed(0)
        model = create_model("vgg11_bn", num_classes=10, width_multiplier=0.25)
        return compute_masks(model, prunable_parameters(model), criterion, 0.995, min_density=0.004,
                             example_inputs=torch.randn(1, 3, 32, 32), iterations=20)

    kernels = masks()
    monkeypatch.setattr(masking, "_on_kernels", lambda *args: False)
    units = masks()
    assert all(torch.equal(a, b) for a, b in zip(kernels, units))
    assert min(int(m.sum()) / m.numel() for m in kernels) >= 0.004 - 1e-9
