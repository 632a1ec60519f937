"""Training, data and evaluation code for the built-in ``demo`` model (see docs/demo-model.md).

Not part of the installed ``sdserve`` distribution: run it from the repository root, e.g.
``python -m train.train --help``.
"""
