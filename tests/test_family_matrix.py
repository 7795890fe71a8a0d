"""Every family of network users bring, through every host: it works (the exact count,
layer collapse warned, and prevented by ``min_density`` / ``max_sparse_ratio``) or it
raises a clear library error; never a silent wrong result.

``SUPPORT`` is the table the README's "Supported networks" section prints; a test
checks that the two agree.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from _families import FAMILIES
from synflow_plugin import SNIP, PruningError, SynFlow, prunable_parameters
from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.criteria.base import flow_outputs

HOSTS = ("torch.prune SynFlow", "torch.prune SNIP", "NNI", "torch-pruning")
AMOUNT, FLOOR = 0.9, 0.02

#: (family, host) -> what happens; "yes" = works as described in the module docstring.
SUPPORT: dict[tuple[str, str], str] = {(family, host): "yes" for family in FAMILIES for host in HOSTS}
SUPPORT.update({
    # NNI prunes Linear and Conv layers only; it refuses by name a config that selects others
    ("bert", "NNI"): "yes (Linear)",
    ("vit", "NNI"): "yes (Linear, Conv2d)",
    ("gpt2", "NNI"): "error naming the tied lm_head (NNI's wrappers would untie it; NNI cannot prune HF Conv1D)",
    ("lstm", "NNI"): "yes (Linear; NNI cannot prune LSTM weights)",
    ("gru", "NNI"): "yes (Linear; NNI cannot prune GRU weights)",
    ("transformer", "NNI"): "yes (Linear; NNI cannot prune in_proj_weight)",
    ("attention", "NNI"): "yes (Linear; NNI cannot prune in_proj_weight)",
    ("conv-transpose", "NNI"): "yes (Conv2d, Linear; NNI cannot prune ConvTranspose2d)",
    # torch-pruning removes channels; what torch-pruning 1.6 cannot do is refused before anything changes
    ("bert", "torch-pruning"): "error without num_heads=; yes with the Hugging Face recipe",
    ("vit", "torch-pruning"): "error without num_heads=; yes with the Hugging Face recipe",
    ("gpt2", "torch-pruning"): "no: torch-pruning 1.6 fails in its own tracer (HF Conv1D)",
    ("lstm", "torch-pruning"): "error naming the LSTM (torch-pruning 1.6 cannot remove its hidden units)",
    ("gru", "torch-pruning"): "warned: nothing to prune (torch-pruning 1.6 has no GRU pruner)",
    ("dict-output", "torch-pruning"): "error naming the returned layer; yes with it in ignored_layers",
})


def exact(masks, tensors, amount=AMOUNT):
    total = sum(t.numel() for t in tensors)
    assert sum(int(m.sum()) for m in masks) == total - round(amount * total)


def collapse_warnings(record):
    return [w for w in record if issubclass(w.category, LayerCollapseWarning)]


# ---------------------------------------------------------------------------- element-wise hosts
def prune_with(family, method, **options):
    torch.manual_seed(0)
    spec = FAMILIES[family]
    model = spec.build()
    params = prunable_parameters(model)
    kwargs = {"example_inputs": spec.example(), "iterations": 5} if method is SynFlow else {"data": spec.data()}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prune.global_unstructured(params, pruning_method=method, amount=AMOUNT, model=model, **kwargs, **options)
    # A tied weight's uses (GPT-2's lm_head and its embedding table) share one mask; it counts once.
    first = {}
    for m, n in params:
        mask = first.setdefault(id(getattr(m, f"{n}_orig")), getattr(m, f"{n}_mask"))
        assert torch.equal(getattr(m, f"{n}_mask"), mask)
    masks = list(first.values())
    exact(masks, masks)
    return model, masks, collapse_warnings(record)


def nni_with(family, **setting):
    pytest.importorskip("nni")
    from synflow_plugin.nni import SynFlowPruner

    torch.manual_seed(0)
    spec = FAMILIES[family]
    model = spec.build()
    config = [{"op_types": ["Linear", "Conv1d", "Conv2d"], "sparse_ratio": AMOUNT, "global_group_id": 0, **setting}]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _, masks = SynFlowPruner(model, config, dummy_input=spec.example(), iterations=5).compress()
    flat = [targets["weight"] for targets in masks.values()]  # biases follow their rows
    assert flat
    exact(flat, flat)
    return flat, collapse_warnings(record)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", [SynFlow, SNIP], ids=["synflow", "snip"])
def test_torch_prune_is_exact_and_collapse_is_warned_then_prevented(family, method):
    model, masks, collapsed = prune_with(family, method)
    spec = FAMILIES[family]
    inputs = spec.batch()
    output = model(**inputs) if isinstance(inputs, dict) else model(*inputs) if isinstance(inputs, tuple) else model(inputs)
    assert all(torch.isfinite(t).all() for t in flow_outputs(output))
    emptied = [m for m in masks if not m.any()]
    assert bool(emptied) == bool(collapsed)  # an empty tensor is always named, and only then
    if collapsed:
        _, masks, collapsed = prune_with(family, method, min_density=FLOOR)
        assert not collapsed
        assert all(m.float().mean() >= FLOOR - 1 / m.numel() for m in masks)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_nni_global_config_is_exact_and_collapse_is_warned_then_prevented(family):
    if SUPPORT[(family, "NNI")].startswith("error naming the tied"):
        with pytest.raises(PruningError, match="one tensor \\(tied\\).*Nothing was wrapped"):
            nni_with(family)
        return
    masks, collapsed = nni_with(family)
    assert bool([m for m in masks if not m.any()]) == bool(collapsed)
    if collapsed:
        masks, collapsed = nni_with(family, max_sparse_ratio=1 - FLOOR)
        assert not collapsed
        assert all(m.float().mean() >= FLOOR - 1 / m.numel() for m in masks)


# ---------------------------------------------------------------------------- structured (torch-pruning)
def hf_heads(model):
    """The Hugging Face recipe: each query/key/value nn.Linear with its head count."""
    heads = model.config.num_attention_heads
    return {getattr(m, p): heads for m in model.modules()
            for p in ("query", "key", "value", "q_proj", "k_proj", "v_proj") if isinstance(getattr(m, p, None), nn.Linear)}


def metapruner(family, *, ignore=(), recipe=False, **options):
    tp = pytest.importorskip("torch_pruning")
    from synflow_plugin.torch_pruning import SynFlowImportance, check_pruned

    torch.manual_seed(0)
    spec = FAMILIES[family]
    model = spec.build()
    example, batch = spec.example(), spec.batch()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    if recipe:
        heads = hf_heads(model)
        options.update(prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5)
    pruner = tp.pruner.MetaPruner(
        model, batch, importance=SynFlowImportance(example_inputs=example), pruning_ratio=0.5, global_pruning=True,
        ignored_layers=[head, *(getattr(model, name) for name in ignore)], num_heads=heads,
        output_transform=lambda out: out.logits if hasattr(out, "logits") else out, **options)

    def run():
        out = model(**batch) if isinstance(batch, dict) else model(*batch) if isinstance(batch, tuple) else model(batch)
        return [tuple(t.shape) for t in flow_outputs(out.logits if hasattr(out, "logits") else out)]

    before, size = run(), sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruner.step()
        check = check_pruned(pruner)
    return model, run, before, size, check, [str(w.message) for w in record]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_torch_pruning_removes_channels_or_refuses_clearly(family):
    expected = SUPPORT[(family, "torch-pruning")]
    if expected.startswith("no:"):
        with pytest.raises(Exception):  # torch-pruning's own failure; the README says so
            metapruner(family)
        return
    if expected.startswith("error"):
        with pytest.raises(PruningError, match="nothing was pruned"):
            metapruner(family)
        if "ignored_layers" in expected:  # the last nn.Linear (here: embed) is ignored, and now the logits
            model, run, before, size, check, _ = metapruner(family, ignore=["logits"])
        elif "recipe" in expected:
            model, run, before, size, check, _ = metapruner(family, recipe=True)
        else:
            return
    else:
        model, run, before, size, check, messages = metapruner(family)
        if expected.startswith("warned"):
            assert any("found nothing to prune" in m for m in messages)
            assert sum(p.numel() for p in model.parameters()) == size
            return
    assert sum(p.numel() for p in model.parameters()) < size
    assert run() == before  # the model still runs and returns what it returned


def test_the_hugging_face_recipe_prunes_whole_heads():
    from _families import bert

    tp = pytest.importorskip("torch_pruning")
    from synflow_plugin.torch_pruning import SynFlowImportance

    torch.manual_seed(0)
    model = bert()
    tokens = {"input_ids": torch.randint(0, 50, (2, 5))}
    pruner = tp.pruner.MetaPruner(
        model, tokens, importance=SynFlowImportance(example_inputs={"inputs_embeds": torch.randn(1, 5, 16)}),
        pruning_ratio=0.5, global_pruning=True, ignored_layers=[model.classifier], num_heads=hf_heads(model),
        prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.5, output_transform=lambda out: out.logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner.step()
    for layer in model.bert.encoder.layer:
        attention = layer.attention.self
        assert attention.query.out_features == 8  # one of two heads left, of the full head size 8
        assert attention.attention_head_size == 8
    assert model(**tokens).logits.shape == (2, 3)


# ---------------------------------------------------------------------------- the README's table
def test_the_readme_table_states_the_support_matrix():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("### Supported networks", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        table[cells[0].strip("`")] = cells[1:]
    assert set(table) == set(FAMILIES)
    for family, cells in table.items():
        assert cells == [SUPPORT[(family, host)] for host in HOSTS], family
    header = re.search(r"\| family \|(.*)\|", section).group(1)
    assert [h.strip() for h in header.split("|")] == list(HOSTS)
