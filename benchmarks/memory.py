"""Peak memory of a SynFlow prune beyond the model, as a multiple of the weight bytes.

Each measurement runs in a fresh process: the same path first prunes a model 16 times
narrower (so that the process's one-time costs, such as the code pages of torch's
kernels and its thread pools, which do not grow with the model, are paid; they are
printed on their own), the memory it freed is given back to the system, the model is
built, its resident memory taken as the baseline, the kernel's peak counter (VmHWM)
reset, the prune run, and the new peak read. The excess over the baseline is what
pruning cost; it is printed divided by the bytes of the pruned weights. Goal: <= 3x
for the core loop (a scoring copy, its gradients, the survivors' bitmap).

Paths: ``core`` (:func:`synflow_plugin.compute_masks`), ``streamed`` (the same with the
gradients streamed, as the loop does when holding them all would crowd the machine's
memory: see :data:`synflow_plugin.masking.STREAM_FRACTION`), ``prune``
(``prune.global_unstructured`` with :class:`synflow_plugin.SynFlow`), ``nni`` (NNI's
compression with :class:`synflow_plugin.nni.SynFlowPruner`, one global group) and ``l1``
(torch's own ``L1Unstructured`` through ``global_unstructured``, for comparison).

    python benchmarks/memory.py [--model vgg16_bn] [--width 1.0] [--repeats 3] [--cold]
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


def build(model_name: str, width: float, mlp: int):
    """The model and its example input: a zoo model at ``width``, or a 4-layer MLP of ``mlp`` weights."""
    import torch
    import torch.nn as nn

    from synflow_plugin.models import create_model

    torch.manual_seed(0)
    if mlp:
        width_ = int((mlp / 4) ** 0.5)  # four square layers of mlp weights in all
        model = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(width_, width_, bias=False), nn.ReLU())][:-1])
        return model, torch.randn(1, width_)
    model = create_model(model_name, num_classes=100, input_shape=(3, 32, 32), width_multiplier=width)
    return model, torch.randn(1, 3, 32, 32)


def prune_with(path: str, model, x, rounds: int) -> None:
    from torch.nn.utils import prune

    from synflow_plugin import SynFlow, compute_masks, masking, prunable_parameters

    params = prunable_parameters(model)
    if path in ("core", "streamed"):
        if path == "streamed":
            masking._available_memory = lambda: 1  # as if memory were short
        compute_masks(model, params, "synflow", 0.999, example_inputs=x, iterations=rounds)
    elif path == "nni":
        import logging

        from synflow_plugin.nni import SynFlowPruner

        logging.getLogger("nni").setLevel(logging.WARNING)
        config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.999, "global_group_id": 0}]
        SynFlowPruner(model, config, dummy_input=x, iterations=rounds, progress=False).compress()
    elif path == "prune":
        prune.global_unstructured(params, pruning_method=SynFlow, amount=0.999, model=model, example_inputs=x,
                                  iterations=rounds, progress=False)
    else:
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.999)


def measure(path: str, model_name: str, width: float, mlp: int, rounds: int, cold: bool) -> dict:
    """Run in this (fresh) process: the peak bytes beyond the built model, and the weight bytes.

    The same path first prunes a model 16 times narrower, on one input and on a batch
    of 16 (torch picks its convolution kernels by size), so that the process's one-time
    costs (the code pages of the kernels the passes touch, the thread pools, lazy
    imports) are in the baseline: they do not grow with the model, and any process that
    has run the model once has paid them. They are returned as ``one_time``. The memory
    the warm-up freed is given back to the system (glibc's ``malloc_trim``; all but a
    few MiB its per-thread arenas keep), so that the prune cannot reuse it unseen.
    ``cold``: no warm-up; the one-time costs count as the prune's."""
    import ctypes
    import ctypes.util
    import gc
    import warnings

    from synflow_plugin import prunable_parameters

    start = _rss("VmRSS")
    if not cold:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # three rounds to 1e-3 collapse layers, as expected
            for batch in (1, 16):
                tiny, x = build(model_name, width / 16, mlp // 256)
                prune_with(path, tiny, x.expand(batch, *x.shape[1:]), rounds=3)
            del tiny, x
        gc.collect()
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)  # the warm-up's freed memory goes back
    one_time = _rss("VmRSS") - start
    model, x = build(model_name, width, mlp)
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m, _ in prunable_parameters(model))
    gc.collect()
    baseline = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    prune_with(path, model, x, rounds)
    peak = _rss("VmHWM")
    return {"path": path, "weight_bytes": weight_bytes, "excess": peak - baseline, "one_time": one_time}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vgg16_bn")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--mlp", type=int, default=0, help="weights of a 4-layer MLP instead of a zoo model")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--paths", default="core,streamed,prune,l1")
    parser.add_argument("--cold", action="store_true",
                        help="no warm-up: the process's one-time costs count as the prune's")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.width, args.mlp, args.rounds, args.cold)))
        return
    what = f"a 4-layer MLP of {args.mlp:,} weights" if args.mlp else f"{args.model} (width x{args.width})"
    print(f"{what}, SynFlow to density 1e-3 in {args.rounds} rounds; peak memory beyond the model"
          + (" (cold processes: their one-time costs included)" if args.cold else ""))
    for path in args.paths.split(","):
        ratios, one_time = [], []
        for _ in range(args.repeats):
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, "--model", args.model, "--width", str(args.width),
                 "--mlp", str(args.mlp), "--rounds", str(args.rounds)] + ["--cold"] * args.cold,
                check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            ratios.append(result["excess"] / result["weight_bytes"])
            one_time.append(result["one_time"] / 2**20)
        ratios.sort()
        print(f"  {path:8s} {ratios[len(ratios) // 2]:.2f}x the weight bytes "
              f"({result['weight_bytes'] / 2**20:.0f} MiB of weights; runs: {', '.join(f'{r:.2f}' for r in ratios)})"
              + ("" if args.cold else f"; one-time cost of the process, before the baseline: "
                                          f"{sorted(one_time)[len(one_time) // 2]:.0f} MiB"))


if __name__ == "__main__":
    main()
