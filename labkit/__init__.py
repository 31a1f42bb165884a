"""labkit: adaptive batch sizes for deep learning, a teaching lab and a small library.

Modules: ``strategies`` (batch-size rules), ``signals`` (loss change, entropy). The package imports
nothing heavy at the top, so ``import labkit.strategies`` stays pure Python.
"""
__version__ = "0.1.0"
