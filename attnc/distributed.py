"""``attnc.distributed``: context parallelism over torch.distributed (``runtime/distributed.py``)."""

from .runtime.distributed import LAYOUTS, attention, pieces, shard, unshard

__all__ = ["LAYOUTS", "attention", "pieces", "shard", "unshard"]
