"""An NNI config_list pruned with SynFlow, then turned into a physically smaller model.

    python examples/nni_config.py [--model vgg16_bn] [--sparse-ratio 0.5] [--iterations 100]

1. The config_list is NNI's: conv output channels ranked in one global group
   (``global_group_id``), no conv losing more than 90% of its channels
   (``max_sparse_ratio``), the classifier pruned element-wise on its own. The same list
   works with NNI's ``L1NormPruner``; only the pruner's name changes.
2. ``SynFlowPruner.compress()`` gives NNI's masks; SynFlow needs no data, only the
   input's shape (``dummy_input``). ``unwrap_model()`` hands the model back.
3. ``speedup_model`` removes the masked channels with NNI's ModelSpeedup (traced by
   ``torch.fx``, since NNI's own tracer fails on torch 2.13); the script checks that the
   small model computes what the masked model computes.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time

import torch

from synflow_plugin.export import apply_masks
from synflow_plugin.models import create_model
from synflow_plugin.nni import SynFlowPruner, complete_masks, speedup_model


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency_ms(model: torch.nn.Module, x: torch.Tensor, repeats: int = 10) -> float:
    with torch.no_grad():
        model(x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
    return (time.perf_counter() - start) / repeats * 1e3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier of the model")
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--sparse-ratio", type=float, default=0.5, help="fraction of conv weights removed")
    parser.add_argument("--iterations", type=int, default=100, help="SynFlow rounds")
    args = parser.parse_args(argv)
    logging.getLogger("nni").setLevel(logging.ERROR)  # NNI logs every step, and expected mask conflicts

    torch.manual_seed(0)
    size = args.input_size
    model = create_model(args.model, num_classes=args.classes, input_shape=(3, size, size),
                         width_multiplier=args.width).eval()
    x = torch.randn(1, 3, size, size)

    config_list = [
        {"op_types": ["Conv2d"], "sparse_ratio": args.sparse_ratio, "granularity": "out_channel",
         "global_group_id": "convs", "max_sparse_ratio": 0.9},
        {"op_types": ["Linear"], "sparse_ratio": 0.5},
    ]
    # pruner = L1NormPruner(model, config_list)       # NNI's own, ranks by |weight|
    pruner = SynFlowPruner(model, config_list, dummy_input=x, iterations=args.iterations)
    _, masks = pruner.compress()
    pruner.unwrap_model()

    reference = apply_masks(copy.deepcopy(model), complete_masks(model, masks))  # what the small model must compute
    small = speedup_model(copy.deepcopy(model), masks, x)

    batch = torch.randn(8, 3, size, size)
    with torch.no_grad():
        expected, got = reference(batch), small(batch)
    difference = float((got - expected).abs().max())

    print(f"{args.model} (width x{args.width:g}, {size}x{size} inputs), SynFlow {args.iterations} rounds, "
          f"conv sparse_ratio {args.sparse_ratio:g}")
    print(f"{'layer':<16}{'channels':>10}{'kept':>8}")
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv2d):
            print(f"{name:<16}{module.out_channels:>10}{small.get_submodule(name).out_channels:>8}")
    print(f"parameters: {parameters(model):,} -> {parameters(small):,}; "
          f"latency {latency_ms(reference, x):.2f} -> {latency_ms(small, x):.2f} ms at batch 1; "
          f"max |small - masked| = {difference:.2e}")
    return {
        "dense_parameters": parameters(model),
        "small_parameters": parameters(small),
        "max_abs_difference": difference,
        "output_shape": list(got.shape),
    }


if __name__ == "__main__":
    main()
