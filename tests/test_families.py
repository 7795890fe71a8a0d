"""The networks users bring: every weight listed, pruned exactly, the pruned model still runs.

Attention, recurrent, transposed-convolution and Hugging Face models (built from small
configs, random weights, nothing downloaded) through ``prunable_parameters`` and the
torch.nn.utils.prune methods, and what NNI does with the layers it cannot prune.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import SNIP, PruningError, SynFlow, prunable_parameters
from _families import Decoder, Encoder, Recurrent
from synflow_plugin.collapse import LayerCollapseWarning


FAMILIES = {
    "transformer": (Encoder, (2, 5, 6), {"enc.layers.0.self_attn.in_proj_weight"}),
    "lstm": (lambda: Recurrent(nn.LSTM), (2, 5, 6), {"rnn.weight_ih_l0", "rnn.weight_hh_l1"}),
    "gru": (lambda: Recurrent(nn.GRU), (2, 5, 6), {"rnn.weight_ih_l0", "rnn.weight_hh_l1"}),
    "conv-transpose": (Decoder, (2, 3, 8, 8), {"up.weight"}),
}


def names_of(model, params):
    names = {id(m): n for n, m in model.named_modules()}
    return {f"{names[id(m)]}.{n}" if names[id(m)] else n for m, n in params}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", [SynFlow, SNIP])
def test_every_weight_of_a_family_is_listed_and_pruned_exactly(family, method):
    build, shape, must = FAMILIES[family]
    torch.manual_seed(0)
    model = build()
    params = prunable_parameters(model)
    listed = names_of(model, params)
    assert must <= listed, f"{family}: {sorted(must - listed)} not listed"
    total = sum(getattr(m, n).numel() for m, n in params)
    every = sum(p.numel() for name, p in model.named_parameters() if p.dim() > 1)
    assert total == every  # every matrix and kernel of these models is listed
    x = torch.randn(*shape)
    kwargs = {"example_inputs": x, "iterations": 5} if method is SynFlow else {
        "data": [(x, torch.tensor([0, 2]))]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        prune.global_unstructured(params, pruning_method=method, amount=0.8, model=model, **kwargs)
    kept = sum(int(getattr(m, f"{n}_mask").sum()) for m, n in params)
    assert kept == total - round(0.8 * total)
    assert torch.isfinite(model(x)).all()  # the pruned model runs, with its masks applied
    for m, n in params:
        assert torch.equal(getattr(m, n), getattr(m, f"{n}_orig") * getattr(m, f"{n}_mask"))


def test_a_tied_weight_is_listed_with_every_use_and_embeddings_only_on_request():
    untied = nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 10))
    assert names_of(untied, prunable_parameters(untied)) == {"1.weight"}
    assert names_of(untied, prunable_parameters(untied, embeddings=True)) == {"0.weight", "1.weight"}
    emb = nn.Embedding(10, 6)
    model = nn.Sequential(emb, nn.Linear(6, 10))
    model[1].weight = emb.weight  # tied output layer: the table it shares is listed with it
    assert [n for m, n in prunable_parameters(model)] == ["weight", "weight"]
    assert names_of(model, prunable_parameters(model)) == {"0.weight", "1.weight"}
    assert names_of(model, prunable_parameters(model, embeddings=True)) == {"0.weight", "1.weight"}
    assert names_of(model, prunable_parameters(model, (nn.Conv2d,))) == set()
    with pytest.raises(PruningError, match="types should be a sequence of nn.Module subclasses"):
        prunable_parameters(model, nn.Linear)


def gpt2():
    transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    return transformers.GPT2LMHeadModel(config).eval()


def test_gpt2_conv1d_blocks_are_listed_and_pruned():
    model = gpt2()
    params = prunable_parameters(model)
    names = names_of(model, params)
    assert {"transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"} <= names
    conv1d = [n for n, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    assert len(conv1d) == 8 and all(f"{n}.weight" in names for n in conv1d)
    inputs = {"inputs_embeds": torch.randn(2, 5, 16)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.9, model=model,
                                  example_inputs=inputs, iterations=5)
    # The tied lm_head and its embedding table are one tensor: counted once, masked alike.
    assert torch.equal(model.lm_head.weight_mask, model.transformer.wte.weight_mask)
    unique = list({id(getattr(m, f"{n}_orig")): (m, n) for m, n in params}.values())
    assert len(unique) == len(params) - 1
    total = sum(getattr(m, n).numel() for m, n in unique)
    assert sum(int(getattr(m, f"{n}_mask").sum()) for m, n in unique) == total - round(0.9 * total)
    assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("family,op_type,name", [
    ("transformer", "MultiheadAttention", "enc.layers.0.self_attn"),
    ("lstm", "LSTM", "rnn"),
])
def test_nni_refuses_by_name_the_layers_it_cannot_prune(family, op_type, name):
    pytest.importorskip("nni")
    from synflow_plugin.nni import SynFlowPruner

    build, shape, _ = FAMILIES[family]
    model = build()
    config = [{"op_types": ["Linear", op_type], "sparse_ratio": 0.5, "global_group_id": 0}]
    with pytest.raises(PruningError, match=rf"selects '{name}' \({op_type}\).*which NNI cannot prune"):
        SynFlowPruner(model, config, dummy_input=torch.randn(*shape))
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())


def test_the_readme_transformers_and_rnns_example_runs():
    pytest.importorskip("transformers")
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Transformers and RNNs", 1)[1]
    source = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        exec(compile(source, "README.md", "exec"), namespace)
    lm, params = namespace["lm"], namespace["params"]
    assert {n for _, n in params} == {"weight", "weight_ih_l0", "weight_hh_l0"}
    total = sum(getattr(m, n).numel() for m, n in params)
    assert sum(int(getattr(m, f"{n}_mask").sum()) for m, n in params) == total - round(0.9 * total)
    assert namespace["gpt2"].transformer.h[0].attn.c_attn.weight_mask.float().mean() < 0.5


class TokenLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 24, batch_first=True)
        self.out = nn.Linear(24, 50)

    def forward(self, tokens):
        return self.out(self.lstm(self.embed(tokens))[0])


def test_synflow_prunes_a_token_model_through_its_embeddings_view():
    from synflow_plugin import embeddings_as_inputs

    torch.manual_seed(0)
    lm = TokenLM()
    tokens = torch.randint(0, 50, (2, 7))
    with pytest.raises(PruningError, match="integer inputs such as token ids"):
        prune.global_unstructured(prunable_parameters(lm), pruning_method=SynFlow, amount=0.5, model=lm,
                                  example_inputs=tokens)
    view = embeddings_as_inputs(lm, "embed")
    assert view.lstm is lm.lstm and isinstance(view.embed, nn.Identity) and isinstance(lm.embed, nn.Embedding)
    params = prunable_parameters(lm)
    prune.global_unstructured(params, pruning_method=SynFlow, amount=0.8, model=view,
                              example_inputs=torch.randn(1, 7, 16), iterations=10)
    total = sum(getattr(m, n).numel() for m, n in params)
    assert sum(int(getattr(m, f"{n}_mask").sum()) for m, n in params) == total - round(0.8 * total)
    assert lm(tokens).shape == (2, 7, 50)  # the model itself is pruned and takes tokens as before
    with pytest.raises(PruningError, match="'lstm' is not an nn.Embedding"):
        embeddings_as_inputs(lm, "lstm")
    with pytest.raises(PruningError, match="the model's are: embed"):
        embeddings_as_inputs(lm)
