"""``attnc.distributed``: context parallelism over torch.distributed (``runtime/distributed.py``)."""

from .runtime.distributed import EXCHANGES, LAYOUTS, Schedule, attention, pieces, schedule, shard, stats, torch_cp_layout, unshard

__all__ = ["EXCHANGES", "LAYOUTS", "Schedule", "attention", "pieces", "schedule", "shard", "stats", "torch_cp_layout", "unshard"]
