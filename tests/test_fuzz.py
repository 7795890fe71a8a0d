"""A fixed sample of random networks, every criterion, both torch entry points: the invariants hold.

See :mod:`synflow_plugin.testing`; ``benchmarks/fuzz.py`` runs a longer sample.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from synflow_plugin import list_criteria
from synflow_plugin.testing import ENTRY_POINTS, check_case, random_case


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize("criterion", list_criteria())
def test_random_networks_keep_the_pruning_contract(criterion, entry_point):
    rng = np.random.default_rng(sum(map(ord, criterion + entry_point)))
    for _ in range(12):
        case = random_case(rng, criterion, entry_point)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-flow warnings are expected on these nets
            check_case(case)
