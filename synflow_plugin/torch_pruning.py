"""``from synflow_plugin.torch_pruning import SynFlowImportance``: the torch-pruning importances.

A short alias of :mod:`synflow_plugin.adapters.torch_pruning` (see there for how channels
are scored). Importing it imports ``torch_pruning``
(``pip install 'synflow-plugin[torch-pruning]'``).

>>> import torch, torch_pruning as tp
>>> from synflow_plugin.models import create_model
>>> from synflow_plugin.torch_pruning import SynFlowImportance
>>> model = create_model("vgg11_bn", width_multiplier=1 / 16, input_shape=(3, 16, 16))
>>> x = torch.randn(1, 3, 16, 16)
>>> pruner = tp.pruner.MetaPruner(model, x, importance=SynFlowImportance(), pruning_ratio=0.5,
...                               global_pruning=True, ignored_layers=[model.classifier])
>>> pruner.step()
>>> model(x).shape
torch.Size([1, 10])
"""

# This module is named like the host package; the adapter imports the real
# `torch_pruning` with an absolute import, which this name cannot shadow.
from synflow_plugin.adapters.torch_pruning import *  # noqa: F401,F403  (every public name of the adapter)
from synflow_plugin.adapters.torch_pruning import __all__ as __all__  # noqa: PLC0414  (one list, the adapter's)
