"""Export and benchmark the networks users bring: one tiny model per family, two batch sizes.

Every family is exported with the defaults (``compact=None``: compact where possible)
after some of its output channels were zeroed, so that compaction has work to do; the
file is then benchmarked with ONNX Runtime at batch 1 and 3 against the torch model.
Hugging Face models are built from small configs with random weights (nothing is
downloaded). The dynamo exporter costs about a second per model, whatever its size.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from synflow_plugin.export import CompactionWarning, benchmark_onnx, export_onnx
from synflow_plugin.models import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("torch_pruning")


# --------------------------------------------------------------------------- the families
class Encoder(nn.Module):
    """A TransformerEncoder classifier over float frames (batch, time, features)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 1)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)).mean(dim=1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.rnn = cell(8, 12, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(self.rnn(torch.relu(self.inp(x)))[0][:, -1])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0].mean(dim=1))


class Decoder(nn.Module):
    """ConvTranspose2d upsampling to class maps, pooled to logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.conv(x))).mean(dim=(2, 3)))


class TwoInputsDict(nn.Module):
    """Two inputs (an image and a vector), a dict of two outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.side = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, image, side):
        h = torch.relu(self.conv(image)).mean(dim=(2, 3)) + self.side(side)
        return {"logits": self.head(h), "features": h}


def transformers_model(kind):
    transformers = pytest.importorskip("transformers", reason="the test extra installs transformers")
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=16)
        return transformers.BertModel(config), torch.randint(0, 30, (1, 6))
    if kind == "vit":
        config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        return transformers.ViTModel(config), torch.randn(1, 3, 8, 8)
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=30, n_positions=16,
                                     use_cache=False, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config), torch.randint(0, 30, (1, 6))


#: family -> (build (model, example inputs at batch 1), layers that must lose channels,
#: layers that must keep their zero channels with a warning)
FAMILIES = {
    # the zeroed half of q/k/v is one whole head, which compaction removes; the last dense
    # layer feeds last_hidden_state, a model output, which is never compacted
    "bert": (lambda: transformers_model("bert"),
             {"encoder.layer.0.intermediate.dense", "encoder.layer.0.attention.self.value"}, set()),
    "vit": (lambda: transformers_model("vit"), {"layers.0.mlp.fc1", "layers.0.attention.v_proj"}, set()),
    "gpt2": (lambda: transformers_model("gpt2"), set(), set()),
    "gru": (lambda: (Recurrent(nn.GRU), torch.randn(1, 5, 6)), set(), {"inp"}),
    "lstm": (lambda: (Recurrent(nn.LSTM), torch.randn(1, 5, 6)), set(), {"inp"}),
    # linear2's channels are also written by a LayerNorm; MultiheadAttention uses out_proj's
    # weights without calling it, so torch-pruning's trace never meets it
    "transformer": (lambda: (Encoder(), torch.randn(1, 5, 6)), {"enc.layers.0.linear1"},
                    {"enc.layers.0.linear2", "enc.layers.0.self_attn.out_proj"}),
    "multihead-attention": (lambda: (Attention(), torch.randn(1, 5, 6)), set(), {"inp", "attn.out_proj"}),
    "conv1d": (lambda: (create_model("conv", num_classes=3, input_shape=(1, 40), width=4),
                        torch.randn(1, 1, 40)), {"features.0"}, set()),
    "conv-transpose": (lambda: (Decoder(), torch.randn(1, 3, 8, 8)), {"conv"}, set()),
    "two-inputs-dict": (lambda: (TwoInputsDict(), (torch.randn(1, 3, 6, 6), torch.randn(1, 5))), set(), set()),
    "resnet18-imagenet": (lambda: (create_model("resnet18_imagenet", num_classes=3, input_shape=(3, 32, 32),
                                                width_multiplier=1 / 16), torch.randn(1, 3, 32, 32)),
                          {"stages.0.0.conv1"}, set()),
}


#: (dense, effective) MACs per sample, by hand (see test_the_hand_counts_of_macs_add_up)
MACS = {
    "gpt2": (22464, 22464),
    "gru": (3876, 3756),
}


def test_the_hand_counts_of_macs_add_up():
    # GPT-2, 1 layer, width d=16, 2 heads, vocabulary 30, t=6 tokens; GPT-2's Conv1D
    # layers are not zeroed (they are not nn.Linear), so dense == effective
    t, d, heads = 6, 16, 2
    linear = t * d * 3 * d + t * d * d + t * d * 4 * d + t * 4 * d * d  # qkv, out proj, mlp up, mlp down
    attention = 2 * heads * t * t * (d // heads)  # Q @ K^T and weights @ V: MatMuls of two activations
    assert linear + attention + t * d * 30 == MACS["gpt2"][0]  # + the LM head
    # GRU family, 5 steps: inp Linear 6 -> 8 (a MatMul on 3-D input, half its rows zero and
    # kept), GRU 8 -> 12 (3 gates: W 36x8, R 36x12 per step), out Linear 12 -> 3 on the last step
    steps = 5
    dense = steps * 6 * 8 + steps * (36 * 8 + 36 * 12) + 12 * 3
    assert (dense, dense - steps * 6 * 4) == MACS["gru"]


def zero_channels(model: nn.Module) -> None:
    """Zero the first half of the output channels (weights and bias) of every hidden Conv/Linear."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer in layers[:-1]:
            half = layer.weight.shape[0] // 2
            layer.weight[:half] = 0
            if layer.bias is not None:
                layer.bias[:half] = 0


def leaves(output):
    return [t for t in torch.utils._pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_and_benchmark_each_family_at_two_batch_sizes(family, tmp_path):
    build, must_shrink, must_keep = FAMILIES[family]
    torch.manual_seed(0)
    model, x = build()
    model.eval()
    zero_channels(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_onnx(model, x, tmp_path / f"{family}.onnx", progress=False)
    compaction = [w.message for w in caught if isinstance(w.message, CompactionWarning)]

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is untouched
    assert result.max_rel_diff <= 1e-4
    assert result.dynamic_batch and result.verified_batch_sizes == (1, 2)
    metadata = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert metadata["synflow_plugin.batch"] == "dynamic"
    assert metadata["synflow_plugin.verified_batch_sizes"] == "1,2"
    assert must_shrink <= set(result.removed_channels), sorted(result.removed_channels)
    for name in must_shrink:
        channels, kept = result.removed_channels[name]
        assert kept == channels - channels // 2  # the zeroed half is gone
    assert must_keep <= set(result.kept_channels), result.kept_channels
    if result.kept_channels:  # whatever was kept is named, with the reason, in one warning
        (warning,) = compaction
        assert warning.kept == result.kept_channels
        assert all(f"'{name}'" in str(warning) for name in result.kept_channels)
    else:
        assert not compaction

    report = benchmark_onnx({family: (result.path, model)}, batch_sizes=(1, 3), warmup=0, repeat=1,
                            verbose=False, progress=False)
    (row,) = report.models
    assert set(row["latency"]) == {"1", "3"} and all(row["latency"][b]["p50_ms"] > 0 for b in ("1", "3"))
    assert row["max_rel_diff"] <= 1e-4  # onnxruntime vs torch on the benchmark's own inputs, both batches
    assert 0 < row["macs_effective"] <= row["macs_dense"]
    if family in MACS:
        assert (row["macs_dense"], row["macs_effective"]) == MACS[family]

    # batch 3 by hand as well, on inputs of this family's kind (token ids stay in the vocabulary)
    inputs = (x,) if isinstance(x, torch.Tensor) else x
    batch3 = tuple(torch.cat([t, t.roll(1, dims=-1), t.roll(2, dims=-1)]) for t in inputs)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {i.name: t.numpy() for i, t in zip(session.get_inputs(), batch3)})
    with torch.no_grad():
        want = [t.numpy() for t in leaves(model(*batch3))]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape[0] == 3
        np.testing.assert_allclose(g, w, atol=1e-4 * max(1.0, float(np.abs(w).max())))
