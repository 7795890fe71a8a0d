"""The registry of pruning-at-initialisation criteria.

A criterion only turns a (scoring copy of a) model and its inputs into scores;
:mod:`synflow_plugin.masking` turns scores into masks, and the adapters hand the
masks to torch.nn.utils.prune, NNI or torch-pruning.

>>> from synflow_plugin.criteria import get_criterion, list_criteria
>>> list_criteria()
['random', 'magnitude', 'snip', 'itersnip', 'force', 'grasp', 'synflow', 'gemminer', 'imp', 'ntksap', 'prospr', 'phew']
>>> get_criterion("synflow", batchnorm="identity")
SynFlowCriterion(batchnorm='identity')
"""

from __future__ import annotations

from synflow_plugin.criteria.base import Criterion, GradientCriterion, Inputs, ScoringState
from synflow_plugin.criteria.registry import (
    CRITERIA,
    ENTRY_POINT_GROUP,
    get_criterion,
    list_criteria,
    load_entry_points,
    register_criterion,
)

# The built-in criteria, registered on import in this order (the order of `synflow-plugin list`).
from synflow_plugin.criteria.random import RandomCriterion
from synflow_plugin.criteria.magnitude import MagnitudeCriterion
from synflow_plugin.criteria.snip import FORCECriterion, IterSNIPCriterion, SNIPCriterion
from synflow_plugin.criteria.grasp import GraSPCriterion
from synflow_plugin.criteria.synflow import SynFlowCriterion
from synflow_plugin.criteria.gemminer import GemMinerCriterion
from synflow_plugin.criteria.imp import IMPCriterion
from synflow_plugin.criteria.ntk_sap import NTKSAPCriterion
from synflow_plugin.criteria.prospr import ProsPrCriterion
from synflow_plugin.criteria.phew import PHEWCriterion

__all__ = [
    # contract
    "Criterion",
    "GradientCriterion",
    "Inputs",
    "ScoringState",
    # criteria
    "RandomCriterion",
    "MagnitudeCriterion",
    "SNIPCriterion",
    "GraSPCriterion",
    "SynFlowCriterion",
    "IterSNIPCriterion",
    "FORCECriterion",
    "GemMinerCriterion",
    "IMPCriterion",
    "NTKSAPCriterion",
    "ProsPrCriterion",
    "PHEWCriterion",
    # registry
    "CRITERIA",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    "load_entry_points",
    "ENTRY_POINT_GROUP",
]
