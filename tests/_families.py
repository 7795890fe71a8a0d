"""The model families users bring, small enough for tests: each ``FAMILIES[name]`` gives
``build() -> model``, an example input for SynFlow, the inputs of a labelled batch and
its targets. Hugging Face models are built from configs (random weights, no download)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


class Encoder(nn.Module):
    """A TransformerEncoder classifier over float frames (batch, time, features)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        return self.out(self.enc(self.inp(x)).mean(dim=1))


class Attention(nn.Module):
    """One nn.MultiheadAttention between linear layers."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0].mean(dim=1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=2, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(self.rnn(x)[0][:, -1])


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(4, 16, 3, padding=1), nn.ReLU(), nn.Conv1d(16, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=2))


class Decoder(nn.Module):
    """ConvTranspose2d upsampling to class maps, pooled to logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.up(torch.relu(self.conv(x))).mean(dim=(2, 3)))


class Separable(nn.Module):
    """A depthwise-separable block (MobileNet's): depthwise 3x3, pointwise 1x1."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 32, 1)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        x = torch.relu(self.pw(torch.relu(self.dw(torch.relu(self.stem(x))))))
        return self.head(x.mean(dim=(2, 3)))


class DictOutput(nn.Module):
    """Returns logits and a feature vector, as retrieval and distillation models do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.logits = nn.Linear(32, 3)
        self.embed = nn.Linear(32, 32)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.logits(h), "features": self.embed(h)}


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(4, 16)
        self.head = nn.Linear(32, 3)

    def forward(self, x, y):
        return self.head(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(y))], dim=1))


def _transformers():
    import pytest

    return pytest.importorskip("transformers", reason="the test extra installs transformers")


def bert():
    config = _transformers().BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return _transformers().BertForSequenceClassification(config).eval()


def vit():
    config = _transformers().ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16,
                                       num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3)
    return _transformers().ViTForImageClassification(config).eval()


def gpt2():
    config = _transformers().GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=50, n_positions=16,
                                        bos_token_id=0, eos_token_id=0)
    return _transformers().GPT2LMHeadModel(config).eval()


def resnet18():
    from synflow_plugin.models import create_model

    return create_model("resnet18", num_classes=3, input_shape=(3, 16, 16), width_multiplier=0.125)


@dataclass(frozen=True)
class Family:
    build: Callable[[], nn.Module]
    example: Callable[[], Any]  # SynFlow's example input (float; inputs_embeds for token models)
    batch: Callable[[], Any]  # the inputs of a labelled batch
    classes: int  # targets are class indices in [0, classes); per token for a language model
    per_token: bool = False

    def data(self) -> list:
        inputs = self.batch()
        shape = (4, 5) if self.per_token else (4,)
        return [(inputs, torch.randint(0, self.classes, shape))]


def _frames():
    return torch.randn(4, 5, 6)


def _image():
    return torch.randn(4, 3, 8, 8)


def _tokens():
    return {"input_ids": torch.randint(0, 50, (4, 5))}


def _embeds():
    return {"inputs_embeds": torch.randn(4, 5, 16)}


FAMILIES: dict[str, Family] = {
    "bert": Family(bert, _embeds, _tokens, 3),
    "vit": Family(vit, lambda: {"pixel_values": _image()}, lambda: {"pixel_values": _image()}, 3),
    "gpt2": Family(gpt2, _embeds, _tokens, 50, per_token=True),
    "lstm": Family(lambda: Recurrent(nn.LSTM), _frames, _frames, 3),
    "gru": Family(lambda: Recurrent(nn.GRU), _frames, _frames, 3),
    "transformer": Family(Encoder, _frames, _frames, 3),
    "attention": Family(Attention, _frames, _frames, 3),
    "conv1d": Family(Conv1dNet, lambda: torch.randn(4, 4, 10), lambda: torch.randn(4, 4, 10), 3),
    "conv-transpose": Family(Decoder, _image, _image, 3),
    "separable": Family(Separable, _image, _image, 3),
    "dict-output": Family(DictOutput, lambda: torch.randn(4, 8), lambda: torch.randn(4, 8), 3),
    "two-inputs": Family(TwoInputs, lambda: (torch.randn(4, 8), torch.randn(4, 4)),
                         lambda: (torch.randn(4, 8), torch.randn(4, 4)), 3),
    "resnet18": Family(resnet18, lambda: torch.randn(4, 3, 16, 16), lambda: torch.randn(4, 3, 16, 16), 3),
}
