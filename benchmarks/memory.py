"""Peak memory of a SynFlow prune beyond the model, as a multiple of the weight bytes.

Each measurement runs in a fresh process: the model is built, its resident memory
taken as the baseline, the kernel's peak counter (VmHWM) reset, the prune run, and
the new peak read. The excess over the baseline is what pruning cost; it is printed
divided by the bytes of the pruned weights. Goal: <= 3x for the core loop (a scoring
copy, its gradients, the survivors' bitmap).

Paths: ``core`` (:func:`synflow_plugin.compute_masks`), ``streamed`` (the same with the
gradients streamed, as the loop does when holding them all would crowd the machine's
memory: see :data:`synflow_plugin.masking.STREAM_FRACTION`), ``prune``
(``prune.global_unstructured`` with :class:`synflow_plugin.SynFlow`) and ``l1`` (torch's
own ``L1Unstructured`` through ``global_unstructured``, for comparison).

    python benchmarks/memory.py [--model vgg16_bn] [--width 1.0] [--repeats 3]
    python benchmarks/memory.py --mlp 100000000      # a 100M-weight MLP (about 5 GB at peak)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def measure(path: str, model_name: str, width: float, mlp: int, rounds: int) -> dict:
    """Run in this (fresh) process: the peak bytes beyond the built model, and the weight bytes."""
    import torch
    import torch.nn as nn
    from torch.nn.utils import prune

    from synflow_plugin import SynFlow, compute_masks, prunable_parameters
    from synflow_plugin.models import create_model

    torch.manual_seed(0)
    if mlp:
        width_ = int((mlp / 4) ** 0.5)  # four square layers of mlp weights in all
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(width_, width_, bias=False), nn.ReLU())][:-1])
        x = torch.randn(1, width_)
    else:
        model = create_model(model_name, num_classes=100, input_shape=(3, 32, 32), width_multiplier=width)
        x = torch.randn(1, 3, 32, 32)
    params = prunable_parameters(model)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m, _ in params)
    import gc

    gc.collect()
    baseline = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    if path in ("core", "streamed"):
        if path == "streamed":
            from synflow_plugin import masking

            masking._available_memory = lambda: 1  # as if memory were short
        compute_masks(model, params, "synflow", 0.999, example_inputs=x, iterations=rounds)
    elif path == "prune":
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.999, model=model, example_inputs=x,
                                  iterations=rounds, progress=False)
    else:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.999)
    peak = _rss("VmHWM")
    return {"path": path, "weight_bytes": weight_bytes, "excess": peak - baseline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--mlp", type=int, default=0, help="weights of a 4-layer MLP instead of a zoo model")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="core,streamed,prune,l1")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.width, args.mlp, args.rounds)))
        return
    what = f"a 4-layer MLP of {args.mlp:,} weights" if args.mlp else f"{args.model} (width x{args.width})"
    print(f"{what}, SynFlow to density 1e-3 in {args.rounds} rounds; peak memory beyond the model")
    for path in args.paths.split(","):
        ratios = []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, "--model", args.model, "--width", str(args.width),
                 "--mlp", str(args.mlp), "--rounds", str(args.rounds)],
                check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            ratios.append(result["excess"] / result["weight_bytes"])
        ratios.sort()
        print(f"  {path:6s} {ratios[len(ratios) // 2]:.2f}x the weight bytes "
              f"({result['weight_bytes'] / 2**20:.0f} MiB of weights; runs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
