"""A SynFlow prune in fresh processes: CPU time and page faults, with and without the allocator hint.

Most users prune once per process, so the heap is in whatever state the program left
it. Each run here is a new process that builds VGG-16-BN (CIFAR-100 shape) and
prunes it to density 1e-3 in 100 rounds on one thread, once with the loop as it is
and once with :func:`synflow_plugin.masking._keep_freed_memory` switched off, in
alternation. Without the hint, glibc may give each round's freed gradients back to
the system and fault them in again in the next round.

    python benchmarks/fresh_process.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys


def child(hint: bool) -> None:
    import resource
    import time
    import warnings

    import torch

    from synflow_plugin import compute_masks, masking, prunable_parameters
    from synflow_plugin.models import create_model

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if not hint:
        masking._keep_freed_memory = lambda: None
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=100, input_shape=(3, 32, 32))
    faults, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
    compute_masks(model, prunable_parameters(model), "synflow", 0.999, example_inputs=torch.randn(1, 3, 32, 32),
                  iterations=100)
    print(json.dumps({"cpu": time.process_time() - start,
                      "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", choices=["hint", "none"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child == "hint")
        return
    results = {"hint": [], "none": []}
    for _ in range(args.runs):
        for mode in results:
            out = subprocess.run([sys.executable, __file__, "--child", mode], check=True, capture_output=True,
                                 text=True).stdout
            results[mode].append(json.loads(out.strip().splitlines()[-1]))
    print(f"VGG-16-BN, SynFlow to 1e-3 in 100 rounds, one thread, {args.runs} fresh processes each")
    for mode, label in (("hint", "with the allocator hint"), ("none", "without it")):
        runs = results[mode]
        print(f"  {label:<24} CPU " + ", ".join(f"{r['cpu']:.2f}" for r in runs) + " s; page faults "
              + ", ".join(f"{r['faults'] / 1000:.0f}k" for r in runs))


if __name__ == "__main__":
    main()
