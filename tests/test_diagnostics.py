"""Layer report, collapse detection and the critical-compression sweep."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import PruningError, PruningTypeError, SynFlow, prunable_parameters
from synflow_plugin.diagnostics import collapsed_layers, critical_compression, format_report, layer_report
from synflow_plugin.models import create_model


def test_layer_report_counts_masks_and_nonzeros():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    prune.custom_from_mask(model[0], "weight", torch.tensor([[1, 0, 0, 0]] * 3))
    with torch.no_grad():
        model[2].weight.zero_()
    rows = layer_report(model)
    assert [(r.name, r.shape, r.size, r.remaining) for r in rows] == [
        ("0.weight", (3, 4), 12, 3), ("2.weight", (2, 3), 6, 0)]
    assert rows[0].density == 0.25 and not rows[0].collapsed and rows[1].collapsed
    assert collapsed_layers(model) == ["2.weight"]
    table = format_report(rows)
    assert "2.weight" in table and "YES" in table and table.splitlines()[-1].startswith("total")
    assert rows[0].as_dict()["density"] == 0.25


def test_layer_report_after_synflow_matches_the_masks():
    torch.manual_seed(0)
    model = create_model("conv", num_classes=4, input_shape=(1, 8, 8), depth=3, width=8)
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.9, model=model,
                              example_inputs=torch.randn(1, 1, 8, 8), iterations=5)
    rows = layer_report(model)
    assert [r.remaining for r in rows] == [int(m.weight_mask.sum()) for m, _ in params]
    with pytest.raises(PruningTypeError, match="should be a torch.nn.Module"):
        layer_report("model")


def test_critical_compression_magnitude_collapses_before_synflow():
    def model_fn():
        torch.manual_seed(0)
        return create_model("vgg11_bn", num_classes=10, width_multiplier=0.125)

    x = torch.randn(1, 3, 32, 32)
    magnitude = critical_compression(model_fn, "magnitude", max_exponent=3.0, step=0.5)
    synflow = critical_compression(model_fn, "synflow", max_exponent=3.0, step=0.5, example_inputs=x,
                                   iterations=20)
    assert magnitude.points[-1]["collapsed"]  # magnitude collapses a layer within 10^3 here
    assert magnitude.critical_exponent is not None and magnitude.critical_exponent < 3.0
    assert synflow.critical_exponent == 3.0 and not any(p["collapsed"] for p in synflow.points)
    assert synflow.critical_exponent > magnitude.critical_exponent
    assert [p["exponent"] for p in synflow.points] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert synflow.points[2]["density"] == pytest.approx(0.1, rel=1e-3)
    assert len(synflow.densities) == len(synflow.points)


def test_critical_compression_validates_its_arguments():
    with pytest.raises(PruningTypeError, match="model_fn should build a fresh model"):
        critical_compression(nn.Linear(2, 2), "magnitude")
    with pytest.raises(PruningError, match="step=0"):
        critical_compression(lambda: nn.Linear(2, 2), "magnitude", step=0)
