"""Glue between labkit strategies and other people's training setups.

``distributed``: ``agree`` makes DDP ranks decide one batch size. ``lightning``: the ``AdaptiveBatchSize``
callback for a Lightning ``Trainer``. ``accelerate``: ``adaptive_loader``, a loader for a Hugging Face
``Accelerator`` loop. The last two import their framework: import them by name
(``from labkit.integrations.lightning import AdaptiveBatchSize``); ``import labkit.integrations`` needs
neither.
"""
from labkit.integrations.distributed import agree

__all__ = ["agree"]
