"""Builds the optional C kernels of the pruning loop; everything else is in pyproject.toml.

The extension is optional: without a compiler the install goes on and the loop uses
its numpy versions (see synflow_plugin/_kernels.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "synflow_plugin._ckernels",
            sources=["synflow_plugin/_kernels.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
