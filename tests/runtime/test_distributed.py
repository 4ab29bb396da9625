"""Context parallelism (issue 20, ``attnc.distributed``): real multi-process runs on the CPU with
the gloo backend (2 and 4 ranks, spawned, bounded in time). Every rank compares its rows and the
gradients of its shards, and of the tensor parameters, with the single-process call on the whole
sequence, and its rows with the float64 reference; zig-zag sharding gives a causal mask equal work per rank (tiles counted on kernel runs)."""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DeviceMesh, DTensor, Shard, distribute_tensor
from torch.distributed.tensor.experimental import context_parallel

import attnc
from attnc.distributed import attention, pieces, schedule, shard, stats, torch_cp_layout, unshard
from attnc.runtime.merge import part_rule

HALF_MASKED = """
attention half_masked:
    mask = kv_idx < 3 and q_idx < 6
"""

def _jit_variant():
    """An @attnc.jit variant capturing an int tensor (document ids, read by the mask) and a float
    tensor that requires grad (per-head slopes): a fresh one, with its own tensors, per call."""
    doc = torch.tensor([0] * 4 + [1] * 5 + [2] * 4)
    slopes = torch.tensor([0.3, -0.2], requires_grad=True)

    def same_doc(b, h, q_idx, kv_idx):
        return (doc[q_idx] == doc[kv_idx]) & (kv_idx <= q_idx)

    @attnc.jit(mask_mod=same_doc)
    def doc_alibi(score, b, h, q_idx, kv_idx):
        return score + slopes[h] * (kv_idx - q_idx)
    return doc_alibi, slopes


CASES = {  # name → (spec or library name, params, Hq, Hkv)
    "causal": ("causal", {}, 4, 2),
    "sliding_window": ("sliding_window", {"window": 4}, 2, 2),
    "document": ("document", {"doc": [[0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]] * 2}, 2, 1),
    "alibi": ("alibi", {}, 4, 4),
    "sigmoid": ("sigmoid", {}, 2, 1),
    "relative_bias": ("relative_bias", {"table": "randn(H, 25)"}, 2, 2),
    "softmax_sink": ("softmax_sink", {"sink": "randn(H)"}, 4, 2),
    "clipped_softmax (two passes)": ("clipped_softmax", {}, 2, 2),
    "fully masked ranks": (HALF_MASKED, {}, 2, 1),
    "@attnc.jit (captured tensors)": ("jit", {}, 2, 1),
}


def _worker(rank, world, init, out_dir, runs):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    mesh = DeviceMesh("cpu", list(range(world)))
    results = []
    try:
        for shape, dim in (((13,), 0), ((2, 13), 1), ((1, 2, 13), 2), ((13, 4, 3), 0), ((2, 3, 13, 5), -2)):
            for layout in ("contiguous", "zigzag"):  # unshard inverts shard, any rank and dim
                x = torch.arange(float(math.prod(shape))).reshape(shape)
                back = unshard(shard(x, rank, world, layout, dim=dim), layout=layout, dim=dim)
                results.append(["check", f"unshard(shard(x)) == x for {shape} dim {dim} {layout}", bool(torch.equal(back, x))])
        try:  # ranks that disagree on a scalar parameter (so on the plan) are refused on every rank, not left waiting
            x = torch.randn(1, 1, 4, 16)
            attention(attnc.load("sliding_window"), x, x, x, window=2 + rank)
            results.append(["check", "different parameters per rank: not refused", False])
        except ValueError as err:
            results.append(["check", f"different parameters per rank: {err}", "same call on its own shard" in str(err)])
        for label, exchange, names in runs:
            # 13 tokens: no layout divides them evenly; torch's context_parallel shards 16 head-tail;
            # "layout:n" for n tokens (fewer than ranks: a rank with none)
            layout, _, count = label.partition(":")
            N, B, D = (int(count) if count else 16 if layout == "torch_cp" else 13), 2, 16
            for name in names:
                spec, params, Hq, Hkv = CASES[name]
                captured = None
                if spec == "jit":  # two copies: the single call's and this rank's, gradients apart
                    (attn_alone, slopes_alone), (attn, captured) = _jit_variant(), _jit_variant()
                else:
                    attn = attn_alone = attnc.compile(spec) if "\n" in spec else attnc.load(spec)
                g = torch.Generator().manual_seed(len(name))
                q, k, v = (torch.randn(B, h, N, D, generator=g) for h in (Hq, Hkv, Hkv))
                w = torch.randn(B, Hq, N, D, generator=g)
                values = {p: (torch.randn(Hq, generator=g) if x == "randn(H)" else
                              torch.randn(Hq, 25, generator=g) if x == "randn(H, 25)" else
                              torch.tensor(x) if isinstance(x, list) else x) for p, x in params.items()}

                def fresh():
                    return {p: (x.clone().requires_grad_() if x.is_floating_point() else x)
                            if isinstance(x, torch.Tensor) else x for p, x in values.items()}
                alone, mine = fresh(), fresh()
                qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
                lse_too = attn.cascade.has_lse
                full = attn_alone(qf, kf, vf, return_lse=lse_too, **alone)
                full, full_lse = full if lse_too else (full, None)
                (full * w).sum().backward()
                exact = attn.reference(q, k, v, return_lse=lse_too, **values)  # the float64 oracle
                exact, exact_lse = exact if lse_too else (exact, None)
                if layout == "dtensor":  # torch's placement: Shard(2) chunks (7 and 6, or 4, 4, 4, 1 tokens)
                    def local(t):
                        return t.to_local() if isinstance(t, DTensor) else distribute_tensor(t.detach(), mesh, [Shard(2)]).to_local()
                    ql, kl, vl = (distribute_tensor(t, mesh, [Shard(2)]).requires_grad_() for t in (q, k, v))
                    sizes = [c.numel() for c in torch.arange(N).chunk(world)] + [0] * world
                    sizes, how = sizes[:world], "contiguous"
                elif layout == "torch_cp":  # the buffers torch's context manager shards, passed to attnc
                    buffers = [t.clone() for t in (q, k, v)]
                    with context_parallel(mesh, buffers=buffers, buffer_seq_dims=[2] * 3, no_restore_buffers=set(buffers)):
                        ql, kl, vl = (t.clone().requires_grad_() for t in buffers)
                    how = torch_cp_layout(N, world)

                    def local(t):
                        return shard(t, rank, world, how)
                    sizes = [len(shard(torch.zeros(N), r, world, how, dim=0)) for r in range(world)]
                else:
                    def local(t):
                        return shard(t, rank, world, layout)
                    ql, kl, vl = (shard(t, rank, world, layout).clone().requires_grad_() for t in (q, k, v))
                    sizes, how = [len(shard(torch.zeros(N), r, world, layout, dim=0)) for r in range(world)], layout
                out = attention(attn, ql, kl, vl, layout=how, exchange=exchange, return_lse=lse_too, **mine)
                out, lse = out if lse_too else (out, None)
                done = stats()
                (out * (distribute_tensor(w, mesh, [Shard(2)]) if layout == "dtensor" else local(w))).sum().backward()
                ring = exchange == "ring" or (exchange == "auto" and part_rule(attn.cascade)[0] is not None)
                planned = schedule(attn, sizes, how, batch=B, heads=Hq, kv_heads=Hkv, head_dim=D, element_size=4, **values)
                results.append(["stats", f"{label}/{exchange}", name, done["exchange"], "ring" if ring else "gather",
                                done.get("sent_bytes"), planned.sent_bytes(rank) if ring
                                else (world - 1) * max(sizes) * B * Hkv * 2 * D * 4])  # a ring all-gather of padded shards
                def own(t):
                    return t.to_local() if isinstance(t, DTensor) else t
                pairs = [("out", own(out), local(full))]
                pairs += [("lse", own(lse), local(full_lse))] if lse_too else []
                pairs += [("out vs float64", own(out).double(), local(exact))]
                pairs += [("lse vs float64", own(lse).double(), local(exact_lse))] if lse_too else []
                pairs += [(f"d{n}", own(a.grad), local(b.grad)) for n, a, b in (("q", ql, qf), ("k", kl, kf), ("v", vl, vf))]
                pairs += [(f"d{p}", mine[p].grad, alone[p].grad) for p in mine
                          if isinstance(mine[p], torch.Tensor) and mine[p].requires_grad]
                pairs += [("dslopes (captured)", captured.grad, slopes_alone.grad)] if captured is not None else []
                for what, got, want in pairs:
                    got, want = got.detach(), want.detach()
                    finite = torch.isfinite(want)
                    same_inf = bool(torch.equal(torch.isneginf(got), torch.isneginf(want)))
                    err = float((got[finite] - want[finite]).abs().max()) if finite.any() else 0.0
                    scale = float(want[finite].abs().max()) if finite.any() else 1.0
                    results.append([f"{label}/{exchange}", name, what, err / max(scale, 1.0), same_inf])
    except Exception as exc:  # reported by the parent, with the rank
        import traceback
        results.append(["error", traceback.format_exc()])
    finally:
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
        dist.destroy_process_group()


def _spawn(world, runs, timeout=300):
    """``runs``: [(layout, [case names])] on ``world`` spawned gloo ranks; their results."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_worker, args=(world, f"{tmp}/init", tmp, runs), nprocs=world,
                                 join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                pytest.fail(f"{world} ranks did not finish in {timeout} s")
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def _check(results):
    """The (layout, case) pairs every rank checked, after asserting each comparison."""
    seen = []
    for rank, rows in enumerate(results):
        mine = set()
        for row in rows:
            assert row[0] != "error", f"rank {rank}: {row[1]}"
            if row[0] == "check":  # a yes-or-no check the rank made itself
                assert row[2], f"rank {rank}: {row[1]}"
                continue
            if row[0] == "stats":  # the exchange the call took, and the bytes it sent against the plan
                _, how, name, took, want, sent, planned = row
                assert took == want, f"rank {rank}, {how}, {name}: took the {took}, not the {want}"
                assert sent == planned, f"rank {rank}, {how}, {name}: sent {sent} bytes, the schedule says {planned}"
                continue
            layout, name, what, rel, same_inf = row
            assert same_inf, f"rank {rank}, {layout}, {name}: {what} is -inf on other rows than the single call's"
            assert rel <= 1e-5, f"rank {rank}, {layout}, {name}: {what} differs from one process by {rel:.2e}"
            mine.add((layout, name, what))
        seen.append(mine)
    assert all(x == seen[0] for x in seen), "the ranks checked different things"
    return {(layout, name) for layout, name, _ in seen[0]}, {what for _, _, what in seen[0]}


@pytest.fixture(scope="module", autouse=True)
def _warm_cache():
    """Build every kernel once here, so the ranks load them rather than all compiling at once."""
    g = torch.Generator().manual_seed(0)
    for spec, params, Hq, Hkv in CASES.values():
        attn = _jit_variant()[0] if spec == "jit" else attnc.compile(spec) if "\n" in spec else attnc.load(spec)
        q, k, v = (torch.randn(2, h, 13, 16, generator=g).requires_grad_() for h in (Hq, Hkv, Hkv))
        values = {p: (torch.randn(Hq, requires_grad=True) if x == "randn(H)" else
                      torch.randn(Hq, 25, requires_grad=True) if x == "randn(H, 25)" else
                      torch.tensor(x) if isinstance(x, list) else x) for p, x in params.items()}
        attn(q, k, v, **values).sum().backward()
        attn(q[:, :, 3:7], k, v, q_offset=3, seq_len=13, **values).sum().backward()


def test_two_ranks_give_one_process_results_for_every_case():
    runs = [("contiguous", "auto", list(CASES)), ("zigzag", "auto", ["causal", "document", "clipped_softmax (two passes)"]),
            ("contiguous", "gather", ["causal", "sigmoid", "fully masked ranks", "@attnc.jit (captured tensors)"]),
            ("dtensor", "auto", ["causal"]),
            ("torch_cp", "auto", ["causal"])]
    cases, checks = _check(_spawn(2, runs))
    assert cases == {(f"{layout}/{how}", name) for layout, how, names in runs for name in names}
    assert checks == {"out", "lse", "out vs float64", "lse vs float64", "dq", "dk", "dv", "dsink", "dtable",
                      "dslopes (captured)"}


def test_four_ranks_with_a_rank_whose_rows_are_all_masked():
    """13 tokens over 4 ranks (zig-zag chunks of 2 and 1 tokens; contiguous runs 4, 3, 3, 3, where
    with `q_idx < 6` ranks 2 and 3 hold only rows that keep no key: out 0, lse −inf, zero grads),
    DTensors, and 3 tokens over 4 ranks (rank 3 holds none, yet takes part in both exchanges)."""
    runs = [("zigzag", "auto", ["causal"]), ("contiguous", "auto", ["fully masked ranks", "sliding_window"]),
            ("dtensor", "ring", ["sliding_window", "sigmoid"]), ("contiguous:3", "auto", ["causal", "softmax_sink"])]
    cases, checks = _check(_spawn(4, runs))
    assert cases == {(f"{layout}/{how}", name) for layout, how, names in runs for name in names}
    assert checks == {"out", "lse", "out vs float64", "lse vs float64", "dq", "dk", "dv", "dsink"}


def _tiles_per_rank(world, layout, n_total=512, block=16):
    """q·kᵀ tile products each rank's calls compute (``attnc.testing.tiles``' instrumented dot)."""
    from attnc.runtime.compiler import interpreter_tiles
    from attnc.testing.tiles import HEAD_DIM, _recording

    attn = attnc.load("causal")
    k = torch.randn(1, 1, n_total, HEAD_DIM)
    k[..., 0] = torch.arange(1, n_total + 1, dtype=torch.float32)  # tags, as count_tiles does
    v = torch.randn(1, 1, n_total, 32)
    counts = []
    for rank in range(world):
        total = 0
        for start, length in pieces(n_total, world, layout)[rank]:
            q = torch.randn(1, 1, length, HEAD_DIM)
            q[..., 0] = 0.0
            visits = np.zeros((-(-length // block), -(-n_total // block)), dtype=np.int64)
            with torch.no_grad(), interpreter_tiles(block, block), _recording(block, block, visits):
                attn(q, k, v, q_offset=start, seq_len=n_total)
            total += int(visits.sum())
        counts.append(total)
    return counts


def test_zigzag_sharding_balances_causal_work():
    """Causal over 512 tokens on 4 ranks: zig-zag gives each rank the same tile products (within
    5 %); contiguous runs give the last rank seven times the first's."""
    zigzag = _tiles_per_rank(4, "zigzag")
    assert max(zigzag) <= 1.05 * min(zigzag), zigzag
    contiguous = _tiles_per_rank(4, "contiguous")
    assert max(contiguous) >= 5 * min(contiguous), contiguous


def test_shard_pieces_cover_the_sequence_once():
    for n_total in (0, 1, 7, 13, 64):
        for world in (1, 2, 3, 4):
            for layout in ("contiguous", "zigzag"):
                x = torch.arange(n_total).view(1, 1, n_total)
                got = torch.cat([shard(x, r, world, layout) for r in range(world)], 2).flatten()
                assert sorted(got.tolist()) == list(range(n_total))
    with pytest.raises(ValueError, match="layout"):
        pieces(8, 2, "ring")


def test_without_a_process_group_the_error_says_what_to_do():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(RuntimeError, match="init_process_group"):
        attention(attnc.load("causal"), q, q, q)


def test_the_readme_example_runs_under_torchrun(tmp_path):
    """``examples/context_parallel.py`` (the README's program) on 2 gloo ranks, as torchrun starts it."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(root / "examples" / "context_parallel.py")],
                          capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(line.split(":")[0] for line in proc.stdout.splitlines() if "max error" in line) == ["rank 0/2", "rank 1/2"]


PLANNED = {  # spec → parameters, for 23 tokens
    "causal": {}, "sliding_window": {"window": 3}, "prefix_lm": {"prefix": 4}, "chunked": {"chunk": 5},
    "document": {"doc": torch.tensor([[0] * 4 + [1] * 9 + [2] * 2 + [3] * 8])}, HALF_MASKED: {},
}


@pytest.mark.parametrize("spec", list(PLANNED), ids=lambda s: s.split(":")[0].split()[-1])
@pytest.mark.parametrize("layout, sizes", [("contiguous", [8, 8, 7]), ("contiguous", [0, 5, 18]), ("contiguous", [6, 6, 6, 5]),
                                           ("zigzag", [7, 8, 8]), ("zigzag", [5, 6, 6, 6])])
def test_the_ring_schedule_needs_exactly_the_shards_the_mask_keeps(spec, layout, sizes):
    """The schedule's run pairs against the dense mask (reference_keep): a pair is planned iff some
    row of the one keeps some key of the other (sound always; exact for these masks)."""
    from attnc.runtime.reference import reference_keep

    attn = attnc.compile(spec) if "\n" in spec else attnc.load(spec)
    n_total = sum(sizes)
    x = torch.zeros(1, 1, n_total, 4)
    keep = reference_keep(attn.cascade, x, x, x, **PLANNED[spec])[0, 0]
    plan = schedule(attn, sizes, layout, **PLANNED[spec])
    for r, mine in enumerate(plan.runs):
        for s, theirs in enumerate(plan.runs):
            want = {(a, b) for a, (qs, ql) in enumerate(mine) for b, (ks, kl) in enumerate(theirs)
                    if bool(keep[qs:qs + ql, ks:ks + kl].any())}
            assert set(plan.needed[r][s]) == want, (r, s)
    world = len(sizes)
    for s in range(world):  # a shard travels to the last rank along the ring that needs it, no further
        beyond = [(s + t) % world for t in range(plan.reach(s) + 1, world)]
        assert not any(plan.needed[r][s] for r in beyond)
        assert plan.reach(s) == 0 or plan.needed[(s + plan.reach(s)) % world][s]


def test_a_causal_ring_over_contiguous_shards_sends_half_the_bytes():
    plan = schedule(attnc.load("causal"), [256] * 4, "contiguous", heads=2, head_dim=64)
    assert [plan.reach(s) for s in range(4)] == [3, 2, 1, 0]
    assert sum(plan.sent_bytes(r) for r in range(4)) * 2 == sum(plan.ring_bytes(r) for r in range(4))
    assert [plan.computed(r) for r in range(4)] == [1, 2, 3, 4]
    zigzag = schedule(attnc.load("causal"), [256] * 4, "zigzag")  # every rank needs every shard
    assert all(zigzag.sent_bytes(r) == zigzag.ring_bytes(r) for r in range(4))


def test_exchange_choices_and_refusals(tmp_path):
    """On a one-rank group: `exchange` is checked, and the ring is refused, naming why, for a norm
    whose parts do not combine."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/init", rank=0, world_size=1)
    try:
        q = torch.randn(1, 2, 5, 16)
        sink = torch.zeros(2)
        with pytest.raises(ValueError, match="sink's, every part would add again.*exchange=\"gather\""):
            attention(attnc.load("softmax_sink"), q, q, q, exchange="ring", sink=sink)
        with pytest.raises(ValueError, match="`exchange` must be one of"):
            attention(attnc.load("causal"), q, q, q, exchange="allgather")
        with pytest.raises(ValueError, match="defines no lse"):
            attention(attnc.load("sigmoid"), q, q, q, return_lse=True)
        qd = distribute_tensor(q, DeviceMesh("cpu", [0]), [Shard(2)])  # Shard(2) means torch.chunk's runs
        with pytest.raises(ValueError, match="must be \"contiguous\", got 'zigzag'"):
            attention(attnc.load("causal"), qd, qd, qd, layout="zigzag")
        want = attnc.load("softmax_sink")(q, q, q, sink=sink)
        assert torch.allclose(attention(attnc.load("softmax_sink"), q, q, q, sink=sink), want, atol=1e-6)
        assert stats()["exchange"] == "gather"
    finally:
        dist.destroy_process_group()
