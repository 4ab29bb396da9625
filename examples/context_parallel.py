"""Context-parallel attention with attnc.distributed, checked against one process.

    torchrun --standalone --nproc-per-node 4 examples/context_parallel.py   # gloo on CPUs, NCCL on GPUs

Every rank builds the same whole batch (same seed), keeps its zig-zag shard of the tokens,
computes its rows and gradients (K/V shards passed around the ring), and compares them with
the single-process call.
"""

import torch
import torch.distributed as dist

import attnc
import attnc.distributed as ad

dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
rank, world = dist.get_rank(), dist.get_world_size()
device = torch.device("cuda", rank % torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cpu")

causal = attnc.load("causal")
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 4, 96, 32, generator=g).to(device) for _ in range(3))  # [B, H, N, D], whole sequence

# this rank's tokens: chunks r and 2W-1-r of 2W (equal causal work per rank)
q_l, k_l, v_l = (ad.shard(t, rank, world, "zigzag").clone().requires_grad_() for t in (q, k, v))
out_l = ad.attention(causal, q_l, k_l, v_l, layout="zigzag")  # exchange="auto": the ring, for softmax
sent = ad.stats()["sent_bytes"]
out_l.square().sum().backward()
out = ad.unshard(out_l.detach(), layout="zigzag")  # the whole output, on every rank

qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
want = causal(qf, kf, vf)
want.square().sum().backward()
errors = {"out": (out - want.detach()).abs().max(), "dq": (q_l.grad - ad.shard(qf.grad, rank, world, "zigzag")).abs().max(),
          "dk": (k_l.grad - ad.shard(kf.grad, rank, world, "zigzag")).abs().max()}
print(f"rank {rank}/{world}: " + ", ".join(f"{name} max error {float(e):.1e}" for name, e in errors.items())
      + f"; sent {sent} bytes of K/V forward")
assert all(float(e) < 1e-4 for e in errors.values())
dist.destroy_process_group()
