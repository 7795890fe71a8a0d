"""Structured pruning at initialisation: SynFlow channel scores driving torch-pruning.

torch-pruning removes whole channels (and everything coupled to them: BatchNorm, the
next layer's inputs, the layers tied by residual sums), so the pruned network is
smaller and faster as it is - no masks, no sparse kernels. Here SynFlow (or any
criterion of the registry) decides which channels go, before any training::

    python examples/torch_pruning_structured.py              # ResNet-20, 50% of channels, 10 steps
    python examples/torch_pruning_structured.py --quick      # tiny and fast (a few seconds)
    python examples/torch_pruning_structured.py --model vgg16_bn --local
    python examples/torch_pruning_structured.py --criterion snip --cifar-dir ~/data/cifar

It prints the parameter count and MACs (multiply-accumulates of one forward pass,
counted by ``tp.utils.count_ops_and_params``) before and after. Data-driven criteria
(SNIP, GraSP, IterSNIP, FORCE) score on CIFAR-10 batches read from ``--cifar-dir``, or
on random stand-in batches without it (fine for a smoke test, meaningless for a study).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
import torch_pruning as tp
from torch import nn

from synflow_plugin.criteria import get_criterion, list_criteria
from synflow_plugin.models import create_model, list_models
from synflow_plugin.torch_pruning import check_pruned, get_importance

IMAGE_MODELS = [name for name in list_models() if name.startswith(("vgg", "resnet", "wide_resnet"))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet20", choices=IMAGE_MODELS)
    parser.add_argument("--criterion", default="synflow", choices=list_criteria())
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove")
    parser.add_argument("--steps", type=int, default=10, help="pruning steps (one criterion round each)")
    parser.add_argument("--local", action="store_true", help="same ratio in every layer (default: global ranking)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the model")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--min-channels", type=int, default=1, help="channels every group keeps")
    parser.add_argument("--cifar-dir", default=None, help="CIFAR-10 directory for data-driven criteria")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="width 1/4, 16x16 inputs, 2 steps")
    return parser


def prunable_channels(pruner: tp.pruner.BasePruner) -> int:
    """Output channels of every group the pruner may prune (the count ``pruning_ratio`` refers to)."""
    groups = pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                      root_module_types=pruner.root_module_types)
    return sum(pruner.DG.get_out_channels(group[0].dep.target.module) for group in groups)


def calibration_data(args: argparse.Namespace, num_classes: int) -> list:
    if args.cifar_dir:
        from synflow_plugin.data import calibration_batches, load_cifar

        return calibration_batches(load_cifar(args.cifar_dir, num_classes=num_classes),
                                   samples_per_class=10, seed=args.seed)
    print("note: no --cifar-dir, so the data-driven criterion scores random stand-in batches")
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(4 * num_classes, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.arange(4 * num_classes) % num_classes
    return [(inputs, labels)]


def main(argv: Sequence[str] | None = None) -> dict:
    """Prune as the command line says; returns the numbers it prints."""
    args = build_parser().parse_args(argv)
    if args.quick:
        args.width, args.image_size, args.steps = min(args.width, 0.25), min(args.image_size, 16), min(args.steps, 2)
    if args.cifar_dir:
        args.image_size = 32
    torch.manual_seed(args.seed)
    model = create_model(args.model, num_classes=args.num_classes, width_multiplier=args.width,
                         input_shape=(3, args.image_size, args.image_size))
    example_inputs = torch.randn(1, 3, args.image_size, args.image_size)

    options = {"seed": args.seed} if args.criterion == "random" else {}
    if get_criterion(args.criterion).needs_data:
        options["data"] = calibration_data(args, args.num_classes)
    importance = get_importance(args.criterion, min_channels=args.min_channels, **options)

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    macs_before, params_before = tp.utils.count_ops_and_params(model, example_inputs)
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=importance, pruning_ratio=args.ratio,
        global_pruning=not args.local, iterative_steps=args.steps, ignored_layers=[classifier],
    )
    channels_before = prunable_channels(pruner)
    for _ in range(args.steps):
        pruner.step()
        if not args.local:
            check_pruned(pruner)  # warns if torch-pruning skipped groups
    channels_after = prunable_channels(pruner)
    macs_after, params_after = tp.utils.count_ops_and_params(model, example_inputs)
    model.eval()
    with torch.no_grad():
        output_shape = tuple(model(example_inputs).shape)

    scope = "layer-wise" if args.local else "global"
    print(f"{args.model} (width {args.width:g}, {args.image_size}x{args.image_size} inputs), "
          f"{args.criterion}, {scope}, {args.ratio:.0%} of channels in {args.steps} steps")
    print(f"channels: {channels_before:>12,} -> {channels_after:>12,}  ({channels_after / channels_before:.3f}x)")
    print(f"params:   {params_before:>12,} -> {params_after:>12,}  ({params_after / params_before:.3f}x)")
    print(f"MACs:     {int(macs_before):>12,} -> {int(macs_after):>12,}  ({macs_after / macs_before:.3f}x)")
    print(f"output:   {output_shape}")
    return {
        "channels_before": channels_before, "channels_after": channels_after,
        "params_before": int(params_before), "params_after": int(params_after),
        "macs_before": int(macs_before), "macs_after": int(macs_after),
        "output_shape": output_shape,
    }


if __name__ == "__main__":
    main(sys.argv[1:])
