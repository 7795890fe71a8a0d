"""A criterion written once, outside the package, reaches every host and every command.

Two criteria are defined and registered in this file alone: ``smallest`` (keeps the
smallest |θ|: the opposite of magnitude, so a mask from it cannot be mistaken for a
built-in's) and ``noisy`` (seeded, needs example inputs, three rounds by default), whose
capabilities the command line and the demo must read without knowing its name. A
third is installed for real, as a distribution with an entry point in the
``synflow_plugin.criteria`` group.
"""

from __future__ import annotations

import json
import pickle
import sys

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import synflow_plugin
import synflow_plugin.criteria.registry as registry
from synflow_plugin import PaIPruningMethod, PruningError, compute_masks, prunable_parameters, pruning_method
from synflow_plugin.checkpoint import ModelSpec, build_model
from synflow_plugin.cli import main
from synflow_plugin.criteria import Criterion, get_criterion, list_criteria, register_criterion
from synflow_plugin.demo import criterion_kwargs


class SmallestCriterion(Criterion):
    """Keeps the smallest weights: score = -|θ|."""

    name = "smallest"
    summary = "keep the smallest |w| (a test criterion)"

    def score(self, state):
        return [-p.detach().abs() for p in state.params]


class NoisyCriterion(Criterion):
    """|θ| times seeded noise; checks that it is handed an example input and a seed."""

    name = "noisy"
    summary = "|w| times seeded noise (a test criterion)"
    needs_example_inputs = True
    seeded = True
    default_iterations = 3
    calls: list[dict] = []

    def __init__(self, *, seed=None):
        self.seed = seed

    def prepare(self, state):
        example = state.inputs.example_inputs
        if example is None:
            raise PruningError("noisy needs example_inputs")
        NoisyCriterion.calls.append({"seed": self.seed, "example_shape": tuple(example.shape)})
        state.cache["generator"] = torch.Generator().manual_seed(0 if self.seed is None else self.seed)

    def score(self, state):
        g = state.cache["generator"]
        return [p.detach().abs() * (1 + 0.5 * torch.rand(p.shape, generator=g)) for p in state.params]


@pytest.fixture
def registered():
    """``smallest`` and ``noisy`` in the registry for one test, removed afterwards."""
    for cls in (SmallestCriterion, NoisyCriterion):
        register_criterion(cls)
    NoisyCriterion.calls.clear()
    yield
    for cls in (SmallestCriterion, NoisyCriterion):
        registry.CRITERIA.pop(cls.name, None)


def hand_net():
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -4.0], [3.0, 0.5]]))
        model[2].weight.copy_(torch.tensor([[2.0, -0.1]]))
    return model


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


# --------------------------------------------------------------------------- torch.nn.utils.prune
def test_pruning_method_of_a_new_criterion_prunes_by_hand(registered):
    model = hand_net()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=pruning_method("smallest"), amount=0.5, model=model)
    # the three smallest |w| of the six are 0.1, 0.5 and 1.0
    assert model[0].weight_mask.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert model[2].weight_mask.tolist() == [[0.0, 1.0]]


def test_pruning_method_through_global_unstructured_equals_compute_masks(registered):
    model = small_mlp()
    params = prunable_parameters(model)
    expected = compute_masks(model, params, "smallest", 0.7)
    magnitude = compute_masks(model, params, "magnitude", 0.7)
    method = pruning_method("smallest")
    assert issubclass(method, PaIPruningMethod) and issubclass(method, prune.BasePruningMethod)
    prune.global_unstructured(params, pruning_method=method, amount=0.7, model=model)
    for (module, _), mask, other in zip(params, expected, magnitude):
        assert torch.equal(module.weight_mask.bool(), mask)
        assert not torch.equal(mask, other)  # not magnitude's masks by accident


def test_pruning_method_apply_prunes_one_layer_scored_in_the_model(registered):
    model = small_mlp()
    layer = model[2]
    weight = layer.weight.detach().clone()
    hook = pruning_method("smallest").apply(layer, "weight", amount=0.25, model=model)
    assert isinstance(hook, prune.CustomFromMask)
    mask = layer.weight_mask.bool()
    assert int(mask.sum()) == 256 - 64
    assert weight.abs()[mask].max() <= weight.abs()[~mask].min()  # the largest quarter is gone
    assert not any(prune.is_pruned(m) for m in (model[0], model[4]))


def test_pruning_method_is_made_once_and_pickles_by_reference(registered):
    method = pruning_method("smallest")
    assert pruning_method("smallest") is method and pruning_method("SMALLEST") is method
    assert method.criterion == "smallest" and method.__module__ == "synflow_plugin.adapters.torch_prune"
    assert method.__qualname__ == "pruning_method('smallest')"
    assert SmallestCriterion.summary in method.__doc__
    assert pickle.loads(pickle.dumps(method)) is method
    # the error messages name the class as it is written
    with pytest.raises(PruningError, match=r"pass model=.*pruning_method=pruning_method\('smallest'\)"):
        method(0.5)


def test_pruning_method_forgets_a_criterion_that_is_unregistered(registered):
    pruning_method("smallest")
    registry.CRITERIA.pop("smallest")
    with pytest.raises(PruningError, match="unknown criterion 'smallest'; expected one of: random, magnitude"):
        pruning_method("smallest")


def test_a_pruned_model_pickles_and_holds_no_method(registered):
    model = small_mlp()
    params = prunable_parameters(model)
    prune.global_unstructured(params, pruning_method=pruning_method("smallest"), amount=0.5, model=model)
    pruning_method("smallest").apply(model[0], "weight", amount=0.5, model=model)  # stacked: a container
    hooks = [h for m, _ in params for h in m._forward_pre_hooks.values()]
    assert {type(h) for h in hooks} == {prune.CustomFromMask, prune.PruningContainer}
    assert all(isinstance(h, prune.CustomFromMask) for c in hooks if isinstance(c, prune.PruningContainer)
               for h in c._pruning_methods)
    x = torch.randn(3, 8)
    clone = pickle.loads(pickle.dumps(model))
    torch.testing.assert_close(clone(x), model(x))


def test_the_core_scores_a_new_criterion_with_its_capabilities(registered):
    model = small_mlp()
    params = prunable_parameters(model)
    x = torch.randn(1, 8)
    a = compute_masks(model, params, "noisy", 0.5, example_inputs=x, seed=1)
    b = compute_masks(model, params, "noisy", 0.5, example_inputs=x, seed=1)
    c = compute_masks(model, params, "noisy", 0.5, example_inputs=x, seed=2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert any(not torch.equal(p, q) for p, q in zip(a, c))
    assert [call["seed"] for call in NoisyCriterion.calls] == [1, 1, 2]


def test_criterion_kwargs_reads_capabilities_not_names(registered):
    everything = dict(example_inputs="x", data="d", seed=7)
    assert criterion_kwargs("noisy", **everything) == {"example_inputs": "x", "seed": 7}
    assert criterion_kwargs("noisy", **everything, max_iterations=2) == {"example_inputs": "x", "seed": 7,
                                                                          "iterations": 2}
    assert criterion_kwargs("noisy", **everything, max_iterations=20)["iterations"] == 3  # its own rounds, at most
    assert criterion_kwargs("noisy", **everything, iterations=20)["iterations"] == 20
    assert criterion_kwargs("smallest", **everything, iterations=20) == {}  # one-shot stays one-shot
    assert criterion_kwargs("snip", **everything) == {"data": "d"}
    assert criterion_kwargs(get_criterion("noisy"), **everything) == {"example_inputs": "x", "seed": 7}
    with pytest.raises(PruningError, match="unknown criterion 'nope'; expected one of: .*smallest, noisy"):
        criterion_kwargs("nope")


# --------------------------------------------------------------------------- command line
MLP = ["mlp", "--input-shape", "1,8", "--model-option", "depth=2", "--model-option", "width=8"]


def test_list_shows_a_new_criterion_with_its_summary(registered, capsys):
    assert main(["list", "--json"]) == 0
    rows = {c["name"]: c for c in json.loads(capsys.readouterr().out)["criteria"]}
    assert list(rows)[-2:] == ["smallest", "noisy"]
    assert rows["smallest"] == {"name": "smallest", "summary": SmallestCriterion.summary, "needs_data": False,
                                "needs_example_inputs": False, "seeded": False, "default_iterations": 1}
    assert rows["noisy"]["needs_example_inputs"] and rows["noisy"]["seeded"]
    assert rows["noisy"]["default_iterations"] == 3
    assert main(["list"]) == 0
    assert NoisyCriterion.summary in capsys.readouterr().out


def test_prune_command_with_a_new_criterion(registered, tmp_path, capsys):
    out = tmp_path / "s.pt"
    assert main(["prune", *MLP, "-c", "smallest", "--amount", "0.5", "--seed", "4", "-o", str(out),
                 "--no-progress"]) == 0
    assert "smallest: kept" in capsys.readouterr().out
    blob = torch.load(out, weights_only=True)
    assert blob["pruning"]["criterion"] == "smallest" and blob["pruning"]["criterion_options"] == {}
    torch.manual_seed(4)  # the command's initialisation
    model = build_model(ModelSpec.from_dict(blob["model"]))
    params = prunable_parameters(model)
    names = {id(m): n for n, m in model.named_modules()}
    for (module, name), mask in zip(params, compute_masks(model, params, "smallest", 0.5)):
        assert torch.equal(blob["masks"][f"{names[id(module)]}.{name}"], mask)


def test_prune_command_hands_a_new_criterion_what_it_declares(registered, tmp_path, capsys):
    out = tmp_path / "n.pt"
    assert main(["prune", *MLP, "-c", "noisy", "--amount", "0.5", "--seed", "4", "-o", str(out),
                 "--no-progress"]) == 0
    assert NoisyCriterion.calls == [{"seed": 4, "example_shape": (1, 1, 8)}]
    blob = torch.load(out, weights_only=True)
    assert blob["pruning"]["criterion_options"] == {"seed": 4} and blob["pruning"]["iterations"] == 3
    assert main(["prune", *MLP, "-c", "noisy", "--amount", "0.5", "--invert", "--iterations", "2",
                 "-o", str(tmp_path / "i.pt"), "--no-progress"]) == 0
    assert NoisyCriterion.calls[-1] == {"seed": 0, "example_shape": (1, 1, 8)}
    assert torch.load(tmp_path / "i.pt", weights_only=True)["pruning"]["iterations"] == 2
    capsys.readouterr()


def test_collapse_command_with_new_criteria(registered, tmp_path, capsys):
    assert main(["collapse", *MLP, "--criteria", "smallest,noisy,magnitude", "--max-exponent", "2",
                 "--step", "0.5", "--iterations", "2", "--seed", "5", "--json", str(tmp_path / "c.json"),
                 "--no-progress"]) == 0
    assert "smallest" in capsys.readouterr().out
    blob = json.loads((tmp_path / "c.json").read_text())["criteria"]
    assert list(blob) == ["smallest", "noisy", "magnitude"]
    assert (blob["smallest"]["iterations"], blob["noisy"]["iterations"]) == (1, 2)
    assert blob["smallest"]["paper_exponent"] is None
    assert {call["seed"] for call in NoisyCriterion.calls} == {5}
    # keeping the smallest weights empties a layer before magnitude does
    assert blob["smallest"]["critical_exponent"] <= blob["magnitude"]["critical_exponent"]


def test_demo_runs_criteria_that_are_not_in_the_paper(registered, tmp_path, monkeypatch):
    from synflow_plugin import demo

    settings = demo.settings_for("tiny")
    settings.collapse_criteria = ("smallest", "noisy", "synflow")
    settings.max_exponent, settings.random_seeds, settings.synflow_iterations = 2.0, (0, 1), 2
    settings.accuracy_criteria, settings.compressions_log10, settings.seeds = ("noisy", "smallest"), (1.0,), (0,)
    settings.sanity_criteria = ("noisy",)
    monkeypatch.setattr(demo, "settings_for", lambda mode: settings)
    results = demo.run_demo(tmp_path / "demo", mode="tiny", skip=("export",), threads=1, progress=False,
                            log=lambda line: None)
    collapse = results["collapse"]["criteria"]
    assert collapse["noisy"]["seeds"] == [0, 1] and collapse["smallest"]["seeds"] == [0]  # seeded: every seed
    assert (collapse["noisy"]["iterations"], collapse["smallest"]["iterations"]) == (2, 1)
    assert collapse["smallest"]["paper_exponent"] is None
    assert {call["example_shape"] for call in NoisyCriterion.calls} == {(1, 3, 32, 32), (1, 1, 8, 8)}
    assert {r["criterion"] for r in results["accuracy"]["summary"]} == {"dense", "noisy", "smallest"}
    assert {r["sanity"] for r in results["sanity"]["summary"]} == {None, "shuffle", "reinit", "invert"}
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| smallest | **" in report and "| noisy | **" in report
    assert "orders of magnitude beyond the best other criterion's here." in report  # no paper value to quote


# --------------------------------------------------------------------------- the entry-point group
PLUGIN_MODULE = '''\
from synflow_plugin.criteria import Criterion


class MyCriterion(Criterion):
    """Squared weights."""

    name = "mine"
    summary = "squared weights (an installed plugin)"

    def score(self, state):
        return [p.detach() ** 2 for p in state.params]
'''


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """Install ``myplugin`` (a dist-info folder and its module) on sys.path; ``entry_points``
    is the body of its ``entry_points.txt`` section. Registry restored afterwards."""
    module = f"myplugin_{tmp_path.name}".replace("-", "_")

    def install(entry_points: str) -> str:
        (tmp_path / f"{module}.py").write_text(PLUGIN_MODULE)
        info = tmp_path / "myplugin-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(
            "[synflow_plugin.criteria]\n" + entry_points.format(module=module) + "\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setattr(registry, "_entry_points_loaded", False)
        return module

    before = dict(registry.CRITERIA)
    yield install
    for name in set(registry.CRITERIA) - set(before):
        registry.CRITERIA.pop(name)
    sys.modules.pop(module, None)


def test_an_installed_plugin_is_registered_and_reaches_every_host(installed, capsys):
    module = installed("mine = {module}:MyCriterion")
    assert list_criteria()[-1] == "mine"
    assert type(get_criterion("mine")).__module__ == module
    assert registry.load_entry_points() == []  # once per process
    model = small_mlp()
    params = prunable_parameters(model)
    expected = compute_masks(model, params, "mine", 0.6)
    assert all(torch.equal(e, m) for e, m in zip(expected, compute_masks(model, params, "magnitude", 0.6)))
    prune.global_unstructured(params, pruning_method=synflow_plugin.pruning_method("mine"), amount=0.6,
                              model=model)
    assert all(torch.equal(m.weight_mask.bool(), e) for (m, _), e in zip(params, expected))
    assert main(["list", "--json"]) == 0
    rows = {c["name"]: c for c in json.loads(capsys.readouterr().out)["criteria"]}
    assert rows["mine"]["summary"] == "squared weights (an installed plugin)"


def test_a_broken_plugin_warns_with_its_name_and_is_skipped(installed):
    installed("mine = {module}:MyCriterion\nbroken = {module}:Missing")
    with pytest.warns(RuntimeWarning, match=r"the criterion plugin 'broken' \(myplugin_.*:Missing\) failed to "
                                            r"load and is skipped: AttributeError"):
        names = list_criteria()
    assert "mine" in names and "broken" not in names
    with pytest.raises(PruningError, match="unknown criterion 'broken'"):
        pruning_method("broken")


def test_the_docstring_examples_run():
    import doctest

    from synflow_plugin import demo
    from synflow_plugin.adapters import torch_prune

    for module in (torch_prune, demo, synflow_plugin):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


# --------------------------------------------------------------------------- every host
def test_a_new_criterion_gives_the_same_masks_in_every_host(registered):
    """Registered here alone: torch.nn.utils.prune, NNI and the core agree element for
    element, and torch-pruning ranks channels by the core's scores."""
    pytest.importorskip("nni")
    tp = pytest.importorskip("torch_pruning")
    from synflow_plugin.nni import get_pruner
    from synflow_plugin.torch_pruning import get_importance

    x = torch.randn(1, 8)
    model = small_mlp()
    core = compute_masks(model, prunable_parameters(model), "noisy", 0.6, example_inputs=x, seed=3)

    model = small_mlp()
    prune.global_unstructured(prunable_parameters(model), pruning_method=pruning_method("noisy"), amount=0.6,
                              model=model, example_inputs=x, seed=3)
    via_prune = [m.weight_mask.bool() for m, _ in prunable_parameters(model)]

    model = small_mlp()
    pruner_cls = get_pruner("noisy")
    assert pruner_cls is get_pruner("noisy") and pruner_cls.criterion == "noisy"
    config = [{"op_types": ["Linear"], "sparse_ratio": 0.6, "global_group_id": 0}]
    pruner = pruner_cls(model, config, dummy_input=x, seed=3)
    _, masks = pruner.compress()
    pruner.unwrap_model()
    via_nni = [masks[name]["weight"].bool() for name in ("0", "2", "4")]
    for name, a, b, c in zip(("0", "2", "4"), core, via_prune, via_nni):
        assert torch.equal(a, b) and torch.equal(a, c), f"the hosts disagree on layer {name}"
    assert sum(int(m.sum()) for m in core) == 448 - round(0.6 * 448)

    model = small_mlp()
    importance = get_importance("noisy", example_inputs=x, seed=3, min_channels=0)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model[0], tp.prune_linear_out_channels, idxs=list(range(16)))
    scores = compute_scores_of(model, x)
    # The group: layer 0's output channels and layer 2's inputs, averaged (group_reduction="mean").
    expected = (scores["0.weight"].sum(dim=1) + scores["2.weight"].sum(dim=0)) / 2
    torch.testing.assert_close(importance(group).to(expected.dtype), expected, rtol=1e-5, atol=1e-6)


def compute_scores_of(model, x):
    from synflow_plugin import compute_scores

    params = prunable_parameters(model)
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(m)]}.weight": s.double() for (m, _), s in
            zip(params, compute_scores(model, params, "noisy", example_inputs=x, seed=3))}


def test_the_writing_a_criterion_page_example_runs():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "writing-a-criterion.md").read_text()
    source = page.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    try:
        exec(compile(source, "writing-a-criterion.md", "exec"), namespace)
        model = small_mlp()
        data = [(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))]
        masks = compute_masks(model, prunable_parameters(model), "gradnorm", 0.5, data=data)
        assert sum(int(m.sum()) for m in masks) == 448 - 224
        with pytest.raises(PruningError, match="gradnorm is data-driven"):
            compute_masks(model, prunable_parameters(model), "gradnorm", 0.5)
    finally:
        registry.CRITERIA.pop("gradnorm", None)
