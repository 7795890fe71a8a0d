"""``python -m synflow_plugin``: the ``synflow-plugin`` command line."""

from synflow_plugin.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
