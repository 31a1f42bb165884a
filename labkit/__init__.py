"""labkit: adaptive batch sizes for deep learning, a teaching lab and a small library.

Modules: ``strategies`` (batch-size rules), ``signals`` (loss change, entropy), ``gns`` (gradient noise
scale), ``data``, ``batching``, ``buckets`` and ``text`` (batches of images and of sequences), ``models``,
``train`` (the loop), ``experiments`` and ``plots``, ``memory`` and ``finder`` (the critical-batch finder),
``serving`` (time-window inference batching), ``widgets`` (the book's panels), ``cli``.
The package imports nothing heavy at the top, so ``import labkit.strategies`` stays pure Python.
"""
__version__ = "0.1.0"


def __getattr__(name):
    """``labkit.find_batch_size`` on first use: ``import labkit`` stays free of torch."""
    if name == "find_batch_size":
        from labkit.finder import find_batch_size
        return find_batch_size
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
