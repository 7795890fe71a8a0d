"""A long fuzz run of the pruning contract (see synflow_plugin.testing).

Draws random networks and requests for every criterion and both torch entry points,
checks each against the invariants, and prints a tally and every failure with the
seed that reproduces it (``random_case(np.random.default_rng(seed))``).

    python benchmarks/fuzz.py [--cases 1000] [--seed 0] [--streamed]

``--streamed``: every prune streams its gradients where it can, as it does when
memory is short (see ``synflow_plugin.masking.STREAM_FRACTION``).
"""

from __future__ import annotations

import argparse
import collections
import time
import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from synflow_plugin import PruningError, masking
from synflow_plugin.testing import check_case, random_case


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--streamed", action="store_true", help="stream the gradients, as when memory is short")
    args = parser.parse_args()
    if args.streamed:
        masking._available_memory = lambda: 1
    torch.set_num_threads(1)
    tally: collections.Counter = collections.Counter()
    failures = []
    start = time.perf_counter()
    for k in tqdm(range(args.cases), unit="case"):
        seed = args.seed + k
        case = random_case(np.random.default_rng(seed))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                check_case(case)
            tally["ok", case.criterion] += 1
        except PruningError as exc:  # a refusal with a clear message is allowed; counted apart
            tally["refused", case.criterion] += 1
            failures.append((seed, "refused", str(exc)[:200]))
        except AssertionError as exc:
            tally["BROKEN", case.criterion] += 1
            failures.append((seed, "BROKEN", str(exc)[:200]))
    print(f"{args.cases} cases in {time.perf_counter() - start:.0f} s")
    for (status, criterion), count in sorted(tally.items()):
        print(f"  {status:8s} {criterion:10s} {count}")
    for seed, status, message in failures:
        print(f"seed {seed}: {status}: {message}")
    return 1 if any(status == "BROKEN" for _, status, _ in failures) else 0


if __name__ == "__main__":
    raise SystemExit(main())
