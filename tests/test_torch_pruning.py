"""The torch-pruning importances: agreement with the core scores and with torch-pruning's
own aggregation, structured pruning of VGG / ResNet, once-per-step scoring, no silent skips.

Everything runs on tiny widths and 8x8 / 16x16 inputs so the file takes seconds.
"""

from __future__ import annotations

import doctest
import importlib.util
import math
import pickle
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch_pruning as tp
from torch import nn

import synflow_plugin.adapters.torch_pruning as adapter
from synflow_plugin import CRITERIA, PruningError, PruningTypeError, ZeroFlowWarning, compute_scores, list_criteria
from synflow_plugin.adapters.torch_pruning import _channel_scores
from synflow_plugin.models import create_model
from synflow_plugin.torch_pruning import (
    IMPORTANCES,
    NORMALIZERS,
    MagnitudeImportance,
    PaIImportance,
    SNIPImportance,
    SynFlowImportance,
    check_pruned,
    get_importance,
)

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 5


def small_cnn(first: nn.Module | None = None) -> nn.Sequential:
    """conv(3->4) bn relu conv(4->6) bn relu pool flatten fc(6->5): three groups to work by hand."""
    torch.manual_seed(0)
    layers = [] if first is None else [first]
    layers += [nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
               nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, NUM_CLASSES)]
    return nn.Sequential(*layers)


def batches(size: int = 8) -> list:
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, size, size, generator=generator), torch.arange(8) % NUM_CLASSES)]


def criterion_kwargs(name: str) -> dict:
    """What the criterion's capabilities ask for, small: a seed, batches, a training function."""
    caps = CRITERIA[name]
    kwargs = {"seed": 0} if caps.seeded else {}
    if caps.needs_data:
        kwargs["data"] = batches()
    if caps.needs_training:
        kwargs["train_fn"] = lambda model: [p.data.mul_(1.5) for p in model.parameters()]
    if caps.reads_training_set:
        kwargs["epochs"] = 1
    return kwargs


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    width = {"resnet20": 0.25, "resnet18": 1 / 16, "vgg16_bn": 1 / 16}[name]
    return create_model(name, num_classes=10, width_multiplier=width, input_shape=(3, 16, 16))


def all_groups(pruner_or_graph) -> list:
    if isinstance(pruner_or_graph, tp.DependencyGraph):
        return list(pruner_or_graph.get_all_groups(root_module_types=(nn.Conv2d, nn.Linear)))
    p = pruner_or_graph
    return list(p.DG.get_all_groups(ignored_layers=p.ignored_layers, root_module_types=p.root_module_types))


def channels(pruner) -> int:
    return sum(pruner.DG.get_out_channels(g[0].dep.target.module) for g in all_groups(pruner))


def assert_agree(adapter_side, core_side, what: str, rtol: float = 1e-5, atol: float = 1e-12) -> None:
    torch.testing.assert_close(
        adapter_side, core_side.to(adapter_side.dtype), rtol=rtol, atol=atol,
        msg=lambda m: f"{what}:\n  adapter: {adapter_side.tolist()}\n  core:    {core_side.tolist()}\n{m}",
    )


# ---------------------------------------------------------------------------- packaging
def test_alias_module_exposes_the_adapter_and_does_not_shadow_torch_pruning():
    import synflow_plugin.torch_pruning as alias

    assert adapter.tp is sys.modules["torch_pruning"]
    assert "synflow_plugin" not in Path(adapter.tp.__file__).parts
    assert alias.__all__ == adapter.__all__
    assert all(getattr(alias, name) is getattr(adapter, name) for name in adapter.__all__)
    assert set(IMPORTANCES) == set(list_criteria())
    assert all(issubclass(cls, tp.importance.Importance) and IMPORTANCES[name].criterion == name
               for name, cls in IMPORTANCES.items())


def test_docstring_example_runs():
    import synflow_plugin.torch_pruning as alias

    result = doctest.testmod(alias, optionflags=doctest.ELLIPSIS)
    assert (result.attempted, result.failed) == (8, 0)


def test_import_synflow_plugin_does_not_import_torch_pruning():
    code = "import sys, synflow_plugin; print('torch_pruning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("criterion", list_criteria())
def test_channel_scores_agree_with_core_element_scores(criterion):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    conv0, conv1, fc = model[0], model[3], model[8]
    kwargs = criterion_kwargs(criterion)
    s0, s1, sf = compute_scores(model, [(conv0, "weight"), (conv1, "weight"), (fc, "weight")],
                                criterion, example_inputs=x, **kwargs)
    expected = {  # a group's score: the mean over its conv/linear layers of the channel sums
        "conv0": (s0.sum((1, 2, 3)) + s1.sum((0, 2, 3))) / 2,
        "conv1": (s1.sum((1, 2, 3)) + sf.sum(0)) / 2,
        "fc": sf.sum(1),
    }
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    importance = get_importance(criterion, example_inputs=x, min_channels=0, prune_outputs=True, **kwargs)
    for name, layer, fn in (("conv0", conv0, tp.prune_conv_out_channels),
                            ("conv1", conv1, tp.prune_conv_out_channels),
                            ("fc", fc, tp.prune_linear_out_channels)):
        group = graph.get_pruning_group(layer, fn, list(range(expected[name].numel())))
        assert_agree(importance(group), expected[name],
                     f"{criterion}, group of {name}: {type(importance).__name__} vs compute_scores")


def test_residual_groups_agree_with_core_on_resnet20():
    model, x = tiny("resnet20"), torch.randn(1, 3, 16, 16)
    pairs = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    scores = dict(zip((m for m, _ in pairs), compute_scores(model, pairs, "synflow", example_inputs=x)))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    importance = SynFlowImportance(min_channels=0, prune_outputs=True)
    largest = 0
    for group in all_groups(graph):
        parts = []
        for item in group:
            layer, s = item.dep.target.module, scores.get(item.dep.target.module)
            if s is None:
                continue
            out = graph.is_out_channel_pruning_fn(item.dep.handler)
            dims = (1, 2, 3) if out else (0, 2, 3)
            per_channel = s.sum(dims if isinstance(layer, nn.Conv2d) else (1 if out else 0))
            parts.append(per_channel[item.idxs])
        largest = max(largest, len(parts))
        root = graph._module2name[group[0].dep.target.module]
        assert_agree(importance(group), torch.stack(parts).mean(0), f"synflow, residual group of {root}")
    assert largest >= 7  # the stage groups couple the stem, every block's conv2 and the next stage


@pytest.mark.parametrize(("reduction", "normalizer"), [
    ("mean", None), ("sum", None), ("max", None), ("prod", None), ("first", None), ("gate", None),
    ("mean", "mean"), ("mean", "max"), ("mean", "sum"), ("mean", "standarization"), ("mean", "gaussian"),
])
def test_magnitude_equals_torch_pruning_group_magnitude(reduction, normalizer):
    model, x = tiny("resnet20"), torch.randn(1, 3, 16, 16)
    with torch.no_grad():  # BatchNorm weights away from 1 so that they count
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    types = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    ours = MagnitudeImportance(group_reduction=reduction, normalizer=normalizer, target_types=types, min_channels=0,
                               prune_outputs=True)
    theirs = tp.importance.GroupMagnitudeImportance(p=1, group_reduction=reduction, normalizer=normalizer,
                                                    target_types=list(types))
    for group in all_groups(graph):
        root = graph._module2name[group[0].dep.target.module]
        # torch-pruning sums in float32, we in float64: agreement to float32 precision
        assert_agree(ours(group), theirs(group).double(),
                     f"{reduction}/{normalizer}, group of {root}: MagnitudeImportance vs tp GroupMagnitudeImportance",
                     rtol=1e-4, atol=1e-5)


def test_grouped_and_transposed_convolutions_map_channels_exactly():
    scores = torch.tensor([1.0, 2.0, 4.0, 8.0]).reshape(4, 1, 1, 1)  # out=4, in/groups=1
    grouped = nn.Conv2d(2, 4, 1, groups=2)
    assert _channel_scores(grouped, "weight", scores, "in").tolist() == [3.0, 12.0]
    assert _channel_scores(grouped, "weight", scores, "out").tolist() == [1.0, 2.0, 4.0, 8.0]
    transposed = nn.ConvTranspose2d(4, 2, 1, groups=2)  # weight (in=4, out/groups=1)
    assert _channel_scores(transposed, "weight", scores, "out").tolist() == [3.0, 12.0]
    assert _channel_scores(transposed, "weight", scores, "in").tolist() == [1.0, 2.0, 4.0, 8.0]


# ---------------------------------------------------------------------------- torch-pruning's calling conventions
@pytest.mark.parametrize("criterion", ["synflow", "snip"])
def test_scoring_works_under_no_grad(criterion):
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    reference = get_importance(criterion, min_channels=0, **criterion_kwargs(criterion))(group)
    with torch.no_grad():
        scores = get_importance(criterion, min_channels=0, **criterion_kwargs(criterion))(group)
        assert not torch.is_grad_enabled()
    assert bool(torch.isfinite(scores).all()) and float(scores.min()) > 0
    assert_agree(scores, reference, f"{criterion}: under no_grad vs with grad")


def test_scores_are_computed_once_per_step_not_once_per_group():
    model, x = tiny("resnet20"), torch.randn(1, 3, 16, 16)
    importance = SynFlowImportance()
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.5, global_pruning=True,
                                  iterative_steps=2, ignored_layers=[model.fc])
    assert len(all_groups(pruner)) >= 10
    with mock.patch.object(adapter, "compute_scores", wraps=adapter.compute_scores) as scoring:
        pruner.step()
        assert scoring.call_count == 1
        pruner.step()
        assert scoring.call_count == 2
        group = all_groups(pruner)[0]
        importance(group), importance(group)
        assert scoring.call_count == 3  # the step pruned the model: scored once more, then cached
        with torch.no_grad():
            model.conv1.weight.mul_(2.0)  # an in-place update (e.g. an optimiser step) invalidates
        importance(group)
        assert scoring.call_count == 4
        importance.reset()
        importance(group)
        assert scoring.call_count == 5


def test_one_shot_data_iterator_serves_every_step():
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    importance = SNIPImportance(data=iter(batches()))
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.5, iterative_steps=2,
                                  ignored_layers=[model[8]])
    pruner.step()
    pruner.step()
    assert [model[0].out_channels, model[3].out_channels] == [2, 3]


# ---------------------------------------------------------------------------- structured pruning
@pytest.mark.parametrize(("name", "global_pruning"), [
    ("vgg16_bn", True), ("resnet20", True), ("resnet18", True), ("resnet20", False),
])
def test_structured_synflow_shrinks_params_and_macs_and_keeps_output_shape(name, global_pruning):
    model, x = tiny(name), torch.randn(1, 3, 16, 16)
    classifier = model.classifier if name.startswith("vgg") else model.fc
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.5,
                                  global_pruning=global_pruning, iterative_steps=2, ignored_layers=[classifier])
    channels0 = channels(pruner)
    pruner.step()
    pruner.step()
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    model.eval()
    assert model(x).shape == (1, 10)
    assert channels(pruner) == channels0 // 2
    assert all(m.out_channels >= 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    if global_pruning:  # SynFlow thins the wide late layers most: params fall more than MACs
        assert 0.05 < params1 / params0 < 0.4 and 0.3 < macs1 / macs0 < 0.8
    else:  # half of every layer's channels: about a quarter of the weights and MACs remain
        assert params1 / params0 == pytest.approx(0.25, abs=0.03)
        assert macs1 / macs0 == pytest.approx(0.25, abs=0.03)


def collapsible_net() -> nn.Sequential:
    """Three convs; the middle one is 1000x smaller, which drags the first group below any
    global magnitude threshold."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    return model


@pytest.mark.parametrize("min_channels", [0, 1, 2])
def test_global_pruning_never_silently_skips_a_group(min_channels):
    model, x = collapsible_net(), torch.randn(1, 3, 8, 8)
    importance = MagnitudeImportance(min_channels=min_channels)
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.5, global_pruning=True,
                                  ignored_layers=[model[8]])
    group = all_groups(pruner)[0]
    scores = importance(group)
    assert int(torch.isinf(scores).sum()) == min_channels
    pruner.step()
    widths = [model[i].out_channels for i in (0, 2, 4)]
    if min_channels == 0:  # torch-pruning's own behaviour: the first group is skipped whole
        assert widths[0] == 8 and sum(widths) > 12
        with pytest.warns(UserWarning, match="skipped every group"):
            assert check_pruned(pruner) == sum(widths) - 12
    else:  # exactly the 12 requested channels go, and the first layer keeps its best ones
        assert widths[0] == min_channels and sum(widths) == 12
        assert check_pruned(pruner) == 0
    assert model(x).shape == (1, 4)


def test_check_pruned_reports_a_request_beyond_what_the_groups_can_give():
    # resnet20 at width 1/4: 12 groups, 112 channels; keeping one per group allows at most 100 to go
    results = {}
    for ratio in (0.85, 0.95):
        model, x = tiny("resnet20"), torch.randn(1, 3, 16, 16)
        pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=ratio,
                                      global_pruning=True, ignored_layers=[model.fc])
        pruner.step()
        results[ratio] = check_pruned(pruner, warn=False)
        assert pruner.initial_total_channels == 112 and len(all_groups(pruner)) == 12
    assert results[0.85] == 0
    assert results[0.95] == 112 - 5  # torch-pruning removed nothing: the threshold was +inf
    with pytest.warns(UserWarning, match="kept 112 channels where pruning_ratio=0.95 asks for 5"):
        check_pruned(pruner)
    local = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), ignored_layers=[model.fc])
    with pytest.raises(PruningError, match="global_pruning=True"):
        check_pruned(local)


# ---------------------------------------------------------------------------- SynFlow's input
def test_synflow_reads_the_input_shape_from_the_trace_or_the_model():
    model, x = small_cnn(), torch.randn(2, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    explicit = SynFlowImportance(example_inputs=x, min_channels=0)(group)
    assert_agree(SynFlowImportance(min_channels=0)(group), explicit, "synflow: traced input vs example_inputs=")

    group._DG = None  # a group built without a graph: the model must be given
    with pytest.raises(PruningError, match="model="):
        SynFlowImportance()(group)
    model.input_shape = (3, 8, 8)  # as the models of synflow_plugin.models declare it (batch of one)
    assert_agree(SynFlowImportance(model=model, min_channels=0)(group),
                 SynFlowImportance(model=model, example_inputs=x[:1], min_channels=0)(group),
                 "synflow: model.input_shape vs example_inputs=")


def test_synflow_asks_for_example_inputs_when_none_can_be_found():
    model, x = small_cnn(first=nn.BatchNorm2d(3)), torch.randn(2, 3, 8, 8)  # input goes to a BatchNorm first
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[1], tp.prune_conv_out_channels, list(range(4)))
    with pytest.raises(PruningError, match="example_inputs="):
        SynFlowImportance()(group)
    assert SynFlowImportance(example_inputs=x)(group).shape == (4,)


class DoubledInput(nn.Module):
    """Concatenates its input with itself: the first conv sees 6 channels, the model takes 3."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.conv(torch.cat([x, x], 1)).mean((2, 3)))


def test_an_inferred_input_the_model_rejects_is_reported_with_the_fix():
    model, x = DoubledInput(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model.conv, tp.prune_conv_out_channels, list(range(4)))
    with pytest.raises(PruningError, match=r"inferred from torch-pruning's trace.*example_inputs=x"):
        SynFlowImportance()(group)
    assert SynFlowImportance(example_inputs=x)(group).shape == (4,)


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("make", "error", "fragment"), [
    (lambda: SynFlowImportance(group_reduction="median"), PruningError, "expected one of"),
    (lambda: SynFlowImportance(normalizer="l2"), PruningError, "expected one of"),
    (lambda: SynFlowImportance(min_channels=-1), PruningError, "min_channels=-1"),
    (lambda: SynFlowImportance(target_types=[int]), PruningTypeError, "nn.Module subclasses"),
    (lambda: SynFlowImportance(batchnorm="none"), PruningError, "batchnorm='none'"),
    (lambda: SynFlowImportance("snip"), PruningTypeError, "by keyword"),
    (lambda: SNIPImportance(), PruningError, "data="),
    (lambda: PaIImportance(), PruningError, "needs a criterion"),
    (lambda: get_importance("optimal-brain-damage"), PruningError, "synflow"),
    (lambda: check_pruned(object()), PruningTypeError, "torch-pruning pruner"),
])
def test_bad_arguments_say_what_to_fix(make, error, fragment):
    with pytest.raises(error, match=fragment):
        make()


def test_a_layer_type_without_a_channel_mapping_is_left_out_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4), nn.Conv2d(4, 2, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 8, 8))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    with_prelu = MagnitudeImportance(min_channels=0, target_types=(nn.Conv2d, nn.Linear, nn.PReLU))
    with pytest.warns(UserWarning, match="cannot map the element scores of PReLU.weight"):
        scores = with_prelu(group)
    assert_agree(scores, MagnitudeImportance(min_channels=0)(group), "magnitude: with PReLU listed vs without")


def mlp_with_a_dead_layer() -> nn.Sequential:
    """fc0 (4->6) is all zeros, so its group's root scores are zero; fc1 (6->5) is not."""
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc0=nn.Linear(4, 6), relu0=nn.ReLU(), fc1=nn.Linear(6, 5), relu1=nn.ReLU(),
                                      out=nn.Linear(5, 3)))
    with torch.no_grad():
        model.fc0.weight.zero_()
    return model


@pytest.mark.parametrize("normalizer", NORMALIZERS)
def test_an_all_zero_group_scores_zeros_under_every_normalizer(normalizer):
    model, x = mlp_with_a_dead_layer(), torch.randn(1, 4)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    dead = graph.get_pruning_group(model.fc0, tp.prune_linear_out_channels, list(range(6)))
    alive = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, list(range(5)))
    importance = MagnitudeImportance(group_reduction="first", normalizer=normalizer, min_channels=0)
    with pytest.warns(ZeroFlowWarning, match=r"every channel score of the group of 'fc0' \(Linear\) is zero"):
        scores = importance(dead)
    assert torch.equal(scores, torch.zeros(6, dtype=torch.float64))
    assert torch.isfinite(importance(alive)).all() and importance(alive).any()
    with pytest.warns(ZeroFlowWarning, match="keeps its first 1 channel"):
        protected = MagnitudeImportance(group_reduction="first", normalizer=normalizer)(dead)
    assert protected.tolist() == [math.inf] + [0.0] * 5  # ties keep the first channel

    one = nn.Sequential(nn.Linear(4, 1), nn.ReLU(), nn.Linear(1, 3))  # gaussian of one channel: no NaN std
    group = tp.DependencyGraph().build_dependency(one, example_inputs=x).get_pruning_group(
        one[0], tp.prune_linear_out_channels, [0])
    assert torch.isfinite(MagnitudeImportance(normalizer=normalizer, min_channels=0)(group)).all()


@pytest.mark.parametrize("normalizer", ["mean", "max", "sum"])
def test_global_pruning_empties_an_all_zero_group_first_and_keeps_its_first_channel(normalizer):
    model, x = mlp_with_a_dead_layer(), torch.randn(1, 4)
    fc1 = model.fc1.weight.detach().clone()
    importance = MagnitudeImportance(group_reduction="first", normalizer=normalizer)
    pruner = tp.pruner.MetaPruner(model, x, importance=importance, pruning_ratio=0.5, global_pruning=True,
                                  ignored_layers=[model.out])
    with pytest.warns(ZeroFlowWarning, match="'fc0'"):
        pruner.step()
    # 11 channels, 6 go: the five tied zeros of fc0 and fc1's weakest channel
    assert (model.fc0.out_features, model.fc1.out_features) == (1, 4)
    strongest = fc1.abs().sum(1).argsort()[1:].sort().values
    torch.testing.assert_close(model.fc1.weight.detach(), fc1[strongest][:, :1])  # fc0's channel 0 stayed
    assert check_pruned(pruner, warn=False) == 0 and model(x).shape == (1, 3)


def test_a_normalizer_that_returns_nan_is_an_error():
    model, x = mlp_with_a_dead_layer(), torch.randn(1, 4)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model.fc1, tp.prune_linear_out_channels, list(range(5)))
    with pytest.raises(PruningError, match=r"normalizer <lambda> returned NaN for the group of 'fc1'"):
        MagnitudeImportance(normalizer=lambda s: s / 0 * 0)(group)
    with pytest.raises(PruningTypeError, match="returned shape \\(1,\\)"):
        MagnitudeImportance(normalizer=lambda s: s[:1])(group)


def test_importance_pickles_after_use():
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    importance = SynFlowImportance(min_channels=0)
    first = importance(group)
    clone = pickle.loads(pickle.dumps(importance))
    assert_agree(clone(group), first, "synflow: unpickled importance vs original")
    alone = pickle.loads(pickle.dumps(SynFlowImportance(min_channels=0, process_group=False)))
    assert alone.process_group is False  # still this process alone, not the default group


def test_a_model_that_is_not_the_traced_one_is_refused():
    model, x = small_cnn(), torch.randn(1, 3, 8, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, list(range(4)))
    with pytest.raises(PruningError, match="drop model="):
        SynFlowImportance(model=small_cnn())(group)


# ---------------------------------------------------------------------------- the example
def load_example():
    path = ROOT / "examples" / "torch_pruning_structured.py"
    spec = importlib.util.spec_from_file_location("torch_pruning_structured", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [["--quick"], ["--quick", "--model", "vgg16_bn", "--criterion", "snip", "--local"]])
def test_example_runs_and_reports_the_reduction(argv, capsys):
    result = load_example().main(argv)
    printed = capsys.readouterr().out
    assert result["output_shape"] == (1, 10)
    assert result["channels_after"] == result["channels_before"] // 2
    assert result["params_after"] < 0.4 * result["params_before"]
    assert result["macs_after"] < 0.8 * result["macs_before"]
    assert f"{result['params_after']:,}" in printed and f"{int(result['macs_after']):,}" in printed


def test_synflow_takes_the_input_of_an_mlp_from_the_pruners_trace():
    # The first node of torch-pruning's graph for a linear layer is its weight transpose;
    # the input is still read from the trace, as for a convolution.
    def pruned(importance):
        torch.manual_seed(0)
        mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
        pruner = tp.pruner.MetaPruner(mlp, torch.randn(2, 8), importance=importance, pruning_ratio=0.5,
                                      ignored_layers=[mlp[4]], global_pruning=True)
        pruner.step()
        return [m.weight.detach().clone() for m in mlp if isinstance(m, nn.Linear)]

    inferred = pruned(SynFlowImportance())
    given = pruned(SynFlowImportance(example_inputs=torch.randn(1, 8)))
    assert [w.shape[0] for w in inferred] == [w.shape[0] for w in given] and sum(w.shape[0] for w in inferred[:2]) == 16
    assert all(torch.equal(a, b) for a, b in zip(inferred, given))


# ---------------------------------------------------------------------------- real networks
def four_stage_net(widths=(8, 16, 32, 64)) -> nn.Sequential:
    """A plain VGG-like net: conv/BN/ReLU/pool per stage, then a linear head."""
    torch.manual_seed(0)
    layers, channels = [], 3
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10)]
    return nn.Sequential(*layers)


def conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_check_pruned_names_a_layer_the_protection_left_with_one_channel():
    from synflow_plugin.collapse import LayerCollapseWarning

    model, x = four_stage_net(), torch.randn(1, 3, 16, 16)
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.6,
                                  global_pruning=True, ignored_layers=[model[-1]])
    pruner.step()
    # one global SynFlow step ranks the whole last stage below the threshold: only the
    # protected best channel survives, and the channel count alone looks perfect
    assert conv_widths(model) == [8, 16, 23, 1]
    with pytest.warns(LayerCollapseWarning, match=r"'12' \(Conv2d\): 1 of 64 channels.*min_channels=1"):
        result = check_pruned(pruner)
    assert result == 0 and result.shortfall == 0
    assert result.collapsed == ("'12' (Conv2d): 1 of 64 channels",) and not result.ok
    assert pickle.loads(pickle.dumps(result)).collapsed == result.collapsed
    assert model(x).shape == (1, 10)

    # a milder step leaves every layer several channels: nothing to report
    model = four_stage_net()
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.3,
                                  global_pruning=True, ignored_layers=[model[-1]])
    pruner.step()
    result = check_pruned(pruner, warn=False)
    assert min(conv_widths(model)) > 1 and result.ok and result.collapsed == ()


def test_check_pruned_counts_min_channels_as_the_collapse_floor():
    from synflow_plugin.collapse import LayerCollapseWarning

    model, x = collapsible_net(), torch.randn(1, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, importance=MagnitudeImportance(min_channels=2), pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model[8]])
    pruner.step()
    assert model[0].out_channels == 2
    with pytest.warns(LayerCollapseWarning, match=r"'0' \(Conv2d\): 2 of 8 channels.*min_channels=2"):
        assert check_pruned(pruner).collapsed == ("'0' (Conv2d): 2 of 8 channels",)


def test_round_to_needs_min_channels_of_round_to_to_keep_the_protection():
    x = torch.randn(1, 3, 16, 16)

    def step(min_channels):
        model = four_stage_net()
        pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(min_channels=min_channels),
                                      pruning_ratio=0.6, global_pruning=True, round_to=8,
                                      ignored_layers=[model[-1]])
        pruner.step()
        assert model(x).shape == (1, 10)
        return model, pruner

    # round_to rounds the 1 protected channel of the last stage down to 0: torch-pruning
    # then refuses to empty the layer and keeps all 64, silently
    model, pruner = step(1)
    assert conv_widths(model) == [8, 16, 16, 64]
    with pytest.warns(UserWarning, match=r"round_to=8 rounds .* Pass min_channels=8"):
        assert check_pruned(pruner) == (8 + 16 + 16 + 64) - int(120 * 0.4)  # kept 104 of the 48 asked
    # protecting round_to channels survives the rounding: the request is met exactly
    model, pruner = step(8)
    assert conv_widths(model) == [8, 16, 16, 8] and all(w % 8 == 0 for w in conv_widths(model))
    assert check_pruned(pruner, warn=False) == 0


class TinyEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(1))


def test_multihead_attention_without_num_heads_is_refused_before_anything_changes():
    model, x = TinyEncoder(), torch.randn(2, 5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.head])
    with pytest.raises(PruningError, match=r"encoder.layers.0.self_attn.*num_heads=\{model.get_submodule"):
        pruner.step()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("global_pruning", [True, False])
def test_multihead_attention_prunes_with_num_heads_and_runs(global_pruning):
    model, x = TinyEncoder(), torch.randn(2, 5, 8)
    attention = model.encoder.layers[0].self_attn
    params = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x, normalizer="mean"),
                                  pruning_ratio=0.5,
                                  global_pruning=global_pruning, ignored_layers=[model.head],
                                  num_heads={attention: attention.num_heads})
    pruner.step()
    assert attention.embed_dim % attention.num_heads == 0 and attention.num_heads == 4
    assert attention.in_proj_weight.shape == (3 * attention.embed_dim, attention.embed_dim)
    assert sum(p.numel() for p in model.parameters()) < params
    assert model(x).shape == (2, 3) and torch.isfinite(model(x)).all()


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(0)
        self.pre = nn.Linear(8, 8)
        self.inp = nn.Linear(8, 16)
        self.rnn = cell(16, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(self.inp(torch.relu(self.pre(x))))[0][:, -1])


def test_lstm_hidden_units_are_refused_with_ignored_layers_and_the_rest_prunes():
    model, x = Recurrent(nn.LSTM), torch.randn(1, 5, 8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    with pytest.raises(PruningError, match=r"'rnn' \(LSTM\).*ignored_layers=\[model.rnn\]"):
        pruner.step()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), pruning_ratio=0.5,
                                  ignored_layers=[model.fc, model.rnn])
    pruner.step()
    assert (model.pre.out_features, model.inp.out_features, model.rnn.input_size) == (4, 8, 8)
    assert model(x).shape == (1, 3)


def test_gru_needs_the_layer_feeding_it_ignored_too():
    x = torch.randn(1, 5, 8)
    model = Recurrent(nn.GRU)
    # torch-pruning fails while building its groups, before any importance is asked; the
    # module documentation gives the recipe below (update it when this starts to pass)
    with pytest.warns(UserWarning), pytest.raises(IndexError):
        tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), ignored_layers=[model.fc, model.rnn])
    with pytest.warns(UserWarning, match="Unwrapped parameters"):
        pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), pruning_ratio=0.5,
                                      ignored_layers=[model.fc, model.rnn, model.inp])
    pruner.step()
    assert (model.pre.out_features, model.inp.out_features, model.rnn.hidden_size) == (4, 16, 12)
    assert model(x).shape == (1, 3)


def groupnorm_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def test_groupnorm_keeps_the_protection_per_channel_group_but_not_with_round_to():
    from synflow_plugin.collapse import LayerCollapseWarning

    x = torch.randn(1, 3, 8, 8)
    model = groupnorm_net()
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.7,
                                  global_pruning=True, ignored_layers=[model[-1]])
    pruner.step()
    # one protected channel in each of the 4 GroupNorm groups: the layers stay valid
    assert [model[0].out_channels, model[3].out_channels] == [4, 8] and model(x).shape == (1, 10)
    with pytest.warns(LayerCollapseWarning, match=r"'0' \(Conv2d\): 4 of 16 channels"):
        assert check_pruned(pruner) == 0

    model = groupnorm_net()
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(min_channels=8), pruning_ratio=0.7,
                                  global_pruning=True, ignored_layers=[model[-1]], round_to=8)
    pruner.step()
    assert [model[0].out_channels, model[3].out_channels] == [16, 32]  # everything skipped
    with pytest.warns(UserWarning, match=r"round_to=8 and channel groups .*'0'.*Leave round_to out"):
        # torch-pruning counts a GroupNorm layer per channel group: 16/4 + 32/4 = 12
        assert check_pruned(pruner) == 12 - int(12 * 0.3)


# ---------------------------------------------------------------------------- networks users bring
def test_check_pruned_counts_attention_groups_as_torch_pruning_ranks_them():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0].mean(dim=1))

    torch.manual_seed(0)
    model, x = Attention(), torch.randn(2, 5, 6)
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.out], num_heads={model.attn: 2})
    pruner.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "kept more than asked"
        assert check_pruned(pruner) == 0
    assert model.attn.embed_dim == 8 and model(x).shape == (2, 3)


def test_a_group_torch_pruning_maps_past_a_layer_is_refused_before_anything_changes():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)).eval()
    model.config.use_cache = False
    for block in model.transformer.h:  # HF Conv1D as nn.Linear, the form torch-pruning can trace
        for parent, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"), (block.mlp, "c_proj")):
            conv = getattr(parent, name)
            linear = nn.Linear(*conv.weight.shape)
            linear.weight.data, linear.bias.data = conv.weight.data.t().contiguous(), conv.bias.data
            setattr(parent, name, linear)
    ids = {"input_ids": torch.randint(0, 50, (2, 5))}
    pruner = tp.pruner.MetaPruner(
        model, ids, importance=SynFlowImportance(example_inputs={"inputs_embeds": torch.randn(1, 5, 16)}),
        pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.lm_head],
        num_heads={b.attn.c_attn: 2 for b in model.transformer.h}, prune_num_heads=True, prune_head_dims=False,
        output_transform=lambda out: out.logits)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(PruningError, match=r"torch-pruning maps the group of .* channels up to \d+ of "
                                           r"'transformer.h.0.attn.c_proj' \(Linear\), which has 16.*nothing was pruned"):
        pruner.step()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_prune_outputs_is_a_bool():
    with pytest.raises(PruningTypeError, match="prune_outputs should be a bool, got str"):
        SynFlowImportance(prune_outputs="yes")


class FeatureAndLogits(nn.Module):
    """Returns its hidden features, which its head also reads (as distillation models do)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(8, 32), nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.head(h), h


def test_a_returned_feature_that_later_layers_read_is_not_shrunk():
    torch.manual_seed(0)
    model, x = FeatureAndLogits(), torch.randn(4, 8)
    pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(example_inputs=x), pruning_ratio=0.5,
                                  global_pruning=True, ignored_layers=[model.head])
    with pytest.raises(PruningError, match=r"removes output channels of 'body' \(Linear\), whose output the "
                                           r"model returns \(as a tensor of shape \(4, 32\)\).*nothing was pruned"):
        pruner.step()
    assert model.body.out_features == 32


def test_without_inputs_the_graphs_own_ends_are_the_returned_layers():
    from synflow_plugin.adapters.torch_pruning import _returned_layers

    model, x = FeatureAndLogits(), torch.randn(4, 8)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    assert set(_returned_layers(model, graph, None)) == {id(model.head)}
    assert set(_returned_layers(model, graph, x)) == {id(model.head), id(model.body)}
