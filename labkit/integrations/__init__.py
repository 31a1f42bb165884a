"""Glue between labkit strategies and training setups: ``distributed`` makes DDP ranks agree on one batch size."""
from labkit.integrations.distributed import agree

__all__ = ["agree"]
