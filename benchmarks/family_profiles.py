"""Per-layer densities that each criterion leaves on the networks users bring.

A small ViT (Hugging Face, built from a config), a GRU classifier over float frames
and the zoo's ResNet-18 at half width are pruned to 90% (and 99%) at initialisation by
magnitude, SNIP and SynFlow, with and without ``min_density`` (default 0.005); the script prints,
per network and criterion, the layers left empty, the lowest density and the density
of each layer family (attention query/key/value, projections, shortcuts, recurrent
weights). Scores use random data of the right shape (offline); nothing is trained.

    python benchmarks/family_profiles.py [--amounts 0.9,0.99]
"""

from __future__ import annotations

import argparse
import re
import warnings
from collections import defaultdict

import torch
from torch import nn

from synflow_plugin import PruningError, compute_masks, prunable_parameters
from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.models import create_model


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(16, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.gru(x)[0][:, -1])


class ViT(nn.Module):
    """Hugging Face's ViTForImageClassification from a small config, returning logits."""

    def __init__(self):
        super().__init__()
        import transformers

        config = transformers.ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64,
                                        num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
                                        num_labels=10)
        self.vit = transformers.ViTForImageClassification(config)

    def forward(self, x):
        return self.vit(pixel_values=x).logits


FAMILIES = (
    (r"q_proj|query", "attention q"), (r"k_proj|key", "attention k"), (r"v_proj|value", "attention v"),
    (r"o_proj|attention\.output", "attention out"), (r"mlp|intermediate", "MLP"),
    (r"shortcut|downsample", "shortcut"), (r"weight_ih", "recurrent in"), (r"weight_hh", "recurrent hidden"),
    (r"patch|^conv1\.", "stem"), (r"classifier|head|fc\.", "head"), (r"conv", "conv"),
)


def families(name: str) -> str:
    for pattern, family in FAMILIES:
        if re.search(pattern, name):
            return family
    return "other"


def profile(build, shape, criterion, amount, min_density):
    torch.manual_seed(0)
    model = build()
    params = prunable_parameters(model)
    names = {id(m): n for n, m in model.named_modules()}
    x = torch.randn(*shape)
    kwargs = {"example_inputs": x[:1]} if criterion == "synflow" else (
        {"data": [(x, torch.randint(0, 10, (shape[0],)))]} if criterion == "snip" else {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        masks = compute_masks(model, params, criterion, amount, min_density=min_density, **kwargs)
    kept, total = defaultdict(int), defaultdict(int)
    empty, lowest = [], 1.0
    for (module, name), mask in zip(params, masks):
        label = f"{names[id(module)]}.{name}"
        kept[families(label)] += int(mask.sum())
        total[families(label)] += mask.numel()
        lowest = min(lowest, float(mask.float().mean()))
        if not mask.any():
            empty.append(label)
    return empty, lowest, {f: kept[f] / total[f] for f in total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amounts", default="0.9,0.99")
    parser.add_argument("--min-density", type=float, default=0.005)
    args = parser.parse_args()
    torch.set_num_threads(1)
    networks = {
        "ViT (HF, 4 layers, width 64)": (ViT, (8, 3, 32, 32)),
        "GRU (2 layers, 64)": (GRUClassifier, (8, 20, 16)),
        "ResNet-18 (zoo, half width)": (lambda: create_model("resnet18", num_classes=10, width_multiplier=0.5),
                                        (8, 3, 32, 32)),
    }
    for net, (build, shape) in networks.items():
        for amount in (float(a) for a in args.amounts.split(",")):
            print(f"\n{net}, amount {amount:g}")
            for criterion in ("magnitude", "snip", "synflow"):
                for min_density in (0.0, args.min_density):
                    try:
                        empty, lowest, per_family = profile(build, shape, criterion, amount, min_density)
                    except PruningError as exc:
                        print(f"  {criterion:9s} min_density={min_density:<5g} refused: {exc}")
                        continue
                    densities = ", ".join(f"{f} {d:.3f}" for f, d in sorted(per_family.items()))
                    print(f"  {criterion:9s} min_density={min_density:<5g} empty layers {len(empty):2d}"
                          f"{' (' + ', '.join(empty[:3]) + (' ...' if len(empty) > 3 else '') + ')' if empty else ''}"
                          f"; lowest density {lowest:.4f}; {densities}")


if __name__ == "__main__":
    main()
