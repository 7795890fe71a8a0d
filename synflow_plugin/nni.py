"""``from synflow_plugin.nni import SynFlowPruner``: the NNI 3.0 pruners.

A short alias of :mod:`synflow_plugin.adapters.nni` (see there for the config keys,
the data-driven pruners' evaluator, and the way to a smaller model). Importing it
imports ``nni`` (``pip install 'synflow-plugin[nni]'``).

>>> import torch
>>> from synflow_plugin.models import create_model
>>> from synflow_plugin.nni import SynFlowPruner
>>> model = create_model("vgg11_bn", width_multiplier=1 / 16, input_shape=(3, 16, 16))
>>> config_list = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.9, "global_group_id": 0}]
>>> pruner = SynFlowPruner(model, config_list, dummy_input=torch.randn(1, 3, 16, 16), iterations=10)
>>> _, masks = pruner.compress()
>>> pruner.unwrap_model()
>>> total = sum(m["weight"].numel() for m in masks.values())
>>> sum(int(m["weight"].sum()) for m in masks.values()) == total - round(0.9 * total)
True
"""

# This module is named like the host package; the adapter imports the real `nni`
# with an absolute import, which this name cannot shadow.
from synflow_plugin.adapters.nni import *  # noqa: F401,F403  (every public name of the package)
from synflow_plugin.adapters.nni import __all__ as __all__  # noqa: PLC0414  (one list, the package's)
