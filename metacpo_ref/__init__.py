"""metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230).

The networks here are small (tens of units): OpenBLAS threads only add
overhead to their matrix products, and they compete with the simulator for
the cores. One thread unless the user sets ``OPENBLAS_NUM_THREADS``.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"
