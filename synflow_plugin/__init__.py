"""synflow-plugin: pruning-at-initialisation criteria for the toolkits you already use.

>>> import torch, torch.nn as nn, torch.nn.utils.prune as prune
>>> from synflow_plugin import SynFlow, prunable_parameters
>>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
>>> prune.global_unstructured(prunable_parameters(model), pruning_method=SynFlow,
...                           amount=0.9, model=model, example_inputs=torch.randn(1, 16))
>>> sum(int(m.weight_mask.sum()) for m in (model[0], model[2]))
32

Any registered criterion, a plugin's included, is a method through
``pruning_method(name)``; ``pruning_method("synflow") is SynFlow``.
"""

__version__ = "0.1.0"

from synflow_plugin.adapters.torch_prune import (
    FORCE,
    IMP,
    NTKSAP,
    PHEW,
    SNIP,
    GemMiner,
    GraSP,
    IterSNIP,
    Magnitude,
    PaIPruningMethod,
    ProsPr,
    Random,
    SynFlow,
    force_unstructured,
    gemminer_unstructured,
    grasp_unstructured,
    imp_unstructured,
    itersnip_unstructured,
    magnitude_unstructured,
    ntksap_unstructured,
    phew_unstructured,
    pruning_method,
    prospr_unstructured,
    random_unstructured,
    snip_unstructured,
    synflow_unstructured,
)
from synflow_plugin.criteria import CRITERIA, Criterion, GradientCriterion, get_criterion, list_criteria, register_criterion
from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.collapse import LayerCollapseWarning
from synflow_plugin.masking import PrecisionWarning, ZeroFlowWarning, compute_masks, compute_scores
from synflow_plugin.targets import clone_model, embeddings_as_inputs, prunable_parameters

__all__ = [
    # torch.nn.utils.prune methods
    "pruning_method",
    "PaIPruningMethod",
    "Random",
    "Magnitude",
    "SNIP",
    "GraSP",
    "SynFlow",
    "IterSNIP",
    "FORCE",
    "GemMiner",
    "IMP",
    "NTKSAP",
    "ProsPr",
    "PHEW",
    # function forms
    "random_unstructured",
    "magnitude_unstructured",
    "snip_unstructured",
    "grasp_unstructured",
    "synflow_unstructured",
    "itersnip_unstructured",
    "force_unstructured",
    "gemminer_unstructured",
    "imp_unstructured",
    "ntksap_unstructured",
    "prospr_unstructured",
    "phew_unstructured",
    # core
    "compute_masks",
    "compute_scores",
    "prunable_parameters",
    "clone_model",
    "embeddings_as_inputs",
    "Criterion",
    "GradientCriterion",
    "CRITERIA",
    "get_criterion",
    "list_criteria",
    "register_criterion",
    # errors and warnings
    "PruningError",
    "PruningTypeError",
    "ZeroFlowWarning",
    "LayerCollapseWarning",
    "PrecisionWarning",
    "__version__",
]
