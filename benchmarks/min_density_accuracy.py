"""What ``min_density`` changes after training, at CPU scale.

The networks on which the criteria collapse layers (docs/real-networks.md) are pruned at
initialisation by SNIP and SynFlow at two sparsities, once as they are and once with
``min_density`` (capped at half the density kept), then trained identically; the script prints the test accuracy (mean and
spread over seeds), the number of tensors left empty, and the dense accuracy beside them:

* a small ViT (Hugging Face, from a config) on the 8x8 digits,
* a 2-layer GRU over MNIST-1D (40 frames of one feature),
* the zoo's ResNet-18 at half width on the 8x8 digits.

Offline: the digits ship with scikit-learn, MNIST-1D is generated locally.

    python benchmarks/min_density_accuracy.py [--epochs 15] [--seeds 0,1,2] [--amounts 0.9,0.99]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torch.nn.utils.prune as prune
from torch import nn

from synflow_plugin import SNIP, SynFlow, prunable_parameters
from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.data import calibration_batches, load_digits, load_mnist1d
from synflow_plugin.models import create_model
from synflow_plugin.train import train_model


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        import transformers

        config = transformers.ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32,
                                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                        num_labels=10)
        self.vit = transformers.ViTForImageClassification(config)

    def forward(self, x):
        return self.vit(pixel_values=x).logits


class GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(1, 64, num_layers=2, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.gru(x.reshape(x.shape[0], -1, 1))[0][:, -1])


def digits():
    train, test = load_digits()
    return train, test, (1, 8, 8)


def mnist1d():
    train, test = load_mnist1d()
    return train, test, (40,)


NETWORKS = {
    "vit/digits": (ViT, digits),
    "gru/mnist1d": (GRU, mnist1d),
    "resnet18-half/digits": (lambda: create_model("resnet18", num_classes=10, input_shape=(1, 8, 8),
                                                  width_multiplier=0.5), digits),
}


def run(network, criterion, amount, floor, seed, epochs, datasets):
    build, _ = NETWORKS[network]
    train, test, shape = datasets
    torch.manual_seed(seed)
    model = build()
    collapsed = 0
    if criterion != "dense":
        params = prunable_parameters(model)
        if criterion == "synflow":
            kwargs = {"example_inputs": torch.ones(1, *shape)}
        else:
            kwargs = {"data": calibration_batches(train, num_batches=1, batch_size=256, seed=seed)}
        method = {"synflow": SynFlow, "snip": SNIP}[criterion]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LayerCollapseWarning)
            prune.global_unstructured(params, pruning_method=method, amount=amount, model=model,
                                      min_density=floor, **kwargs)
        collapsed = sum(1 for m, n in params if not getattr(m, f"{n}_mask").any())
    result = train_model(model, train, test, epochs=epochs, batch_size=128, lr=3e-3, seed=seed, progress=False)
    return result.test_accuracy, collapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--amounts", default="0.9,0.99")
    parser.add_argument("--min-density", type=float, default=0.01)
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    amounts = [float(a) for a in args.amounts.split(",")]
    print(f"{args.epochs} epochs (Adam 3e-3, cosine), seeds {seeds}, min_density={args.min_density}; "
          "accuracy mean ± stdev over seeds [tensors left empty]")
    for network in args.networks.split(","):
        datasets = NETWORKS[network][1]()
        start = time.perf_counter()
        # the floor is capped at half the density kept, so that every request is feasible
        rows = [("dense", None, 0.0)] + [(c, a, f) for a in amounts for c in ("snip", "synflow")
                                         for f in (0.0, min(args.min_density, (1 - a) / 2))]
        print(f"\n{network}")
        for criterion, amount, floor in rows:
            results = [run(network, criterion, amount, floor, seed, args.epochs, datasets) for seed in seeds]
            accuracies = [a for a, _ in results]
            spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
            label = "dense" if criterion == "dense" else f"{criterion} {amount:g}" + (
                f", min_density={floor:g}" if floor else "")
            empty = "/".join(str(c) for _, c in results)
            print(f"  {label:34s} {statistics.mean(accuracies):.3f} ± {spread:.3f}  [{empty}]", flush=True)
        print(f"  ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
