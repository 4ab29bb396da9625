"""The static performance model: what one iteration of a kernel's key loop costs, read from SASS.

A kernel built ahead of time (``runtime/aot.py``) is disassembled with the ``nvdisasm`` Triton
bundles, with line information, so each machine instruction is tied to a line of the generated
``.py`` file. A loop is a backward branch; the loops that matter are the innermost ones that
issue matrix instructions (``HGMMA`` on sm_90, ``HMMA`` on sm_80), and each is named after the
``for`` of the generated source whose body most of its instructions come from (the templates
mark them ``# full tiles`` / ``# boundary tiles``, ``# full query tiles`` / ``# boundary query
tiles`` in the dK/dV kernel).

Per iteration of such a loop, per warp, the model counts every instruction, the matrix
instructions and the floating-point work they do, the special-function (``MUFU``) instructions,
local-memory (spill) instructions, shared/global loads by kind and width, barriers, and whether
the last warpgroup MMA of the iteration is still in flight at the back edge (wgmma carried into
the next iteration) or waited inside it. From these, per SM, with ``W`` warps:

    tensor cycles  = W · MMA FLOP / peak            (peak: 4096 fp16/bf16 FLOP per clock on sm_90,
                                                    2048 on sm_80; tf32 half)
    issue cycles   = W · instructions / 4           (4 schedulers, one warp-instruction per clock)
    MUFU cycles    = W · MUFU instructions · 32 / 16   (16 special-function results per clock)
    ceiling        = tensor cycles / max(tensor, issue, MUFU cycles)

The ceiling is an upper bound on the fraction of tensor-core peak the loop can reach: it ignores
memory latency, occupancy, dependencies and dual issue, and counts the instructions of every
branch of the loop body (predicated code counts; a loop with inner branches is flagged). The
figure the issues quote, non-MMA instructions per 1000 MMA FLOP, is ``(instructions − MMA
instructions) / (MMA FLOP / 1000)`` per warp. Small MMA shapes (``HGMMA.64x16``) are counted at
peak rate, which flatters them.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from functools import cached_property

# Dense tensor-core FLOP per clock per SM for 16-bit operands (tf32: half), by compute capability.
MMA_PEAK = {80: 2048, 86: 1024, 89: 1024, 90: 4096}
ISSUE_PER_CLOCK = 4  # warp-instructions per clock per SM (four schedulers)
MUFU_PER_CLOCK = 16  # special-function results per clock per SM
WARP = 32

_INSTR = re.compile(r"/\*([0-9a-f]+)\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_x_\d+):")
_LINE = re.compile(r"line (\d+)")
_TARGET = re.compile(r"`?\((\.L_x_\d+)\)")


@dataclass(frozen=True)
class Instr:
    address: int
    opcode: str  # e.g. "HGMMA.64x128x16.F32", "LDGSTS.E.BYPASS.128"
    text: str  # the whole instruction, predicate included
    line: int | None  # source line of the generated kernel (the outermost, for inlined helpers)

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


def disassemble(cubin: bytes) -> str:
    """``nvdisasm -c -gi`` of a cubin: SASS with the source line of each instruction."""
    from .aot import _nvidia_tool

    tool = _nvidia_tool("nvdisasm")
    if tool is None:
        raise RuntimeError("Triton's NVIDIA backend has no usable `nvdisasm` (set TRITON_NVDISASM_PATH)")
    fd, path = tempfile.mkstemp(suffix=".cubin", prefix="attnc_perf_")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(cubin)
        proc = subprocess.run([tool, "-c", "-gi", path], capture_output=True, text=True, check=False)
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        raise RuntimeError(f"nvdisasm failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def parse_sass(text: str, function: str | None = None) -> tuple[list[Instr], dict[str, int]]:
    """Instructions of ``function`` (default: the first in the listing) and its labels' addresses."""
    instrs: list[Instr] = []
    labels: dict[str, int] = {}
    pending: list[str] = []
    line = None
    inside = function is None
    for raw in text.splitlines():
        header = re.match(r"\s*//-+ \.text\.(\S+)\s+-+", raw)
        if header:
            if instrs and (function is None or inside):
                break  # the next function
            inside = function is None or header.group(1) == function
            continue
        if not inside:
            continue
        if raw.strip().startswith("//##"):
            lines = _LINE.findall(raw)
            line = int(lines[-1]) if lines else None
            continue
        m = _LABEL.match(raw)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSTR.search(raw)
        if not m:
            continue
        address = int(m.group(1), 16)
        body = m.group(2).strip().lstrip("{").strip()
        parts = body.split()
        if parts and parts[0].startswith("@"):
            parts = parts[1:]
        if not parts:
            continue
        for label in pending:
            labels[label] = address
        pending = []
        instrs.append(Instr(address, parts[0], body, line))
    return instrs, labels


def _mma_flop(opcode: str) -> tuple[int, str] | None:
    """FLOP per warp of one matrix instruction and its operand kind, or None."""
    m = re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", opcode)
    if m:  # a warpgroup instruction: each of its 4 warps issues it
        mm, nn, kk = map(int, m.groups())
        return 2 * mm * nn * kk // 4, ("tf32" if "TF32" in opcode else "16-bit")
    m = re.match(r"HMMA\.(\d\d)(\d)(\d+)", opcode)
    if m:
        mm, nn, kk = map(int, m.groups())
        return 2 * mm * nn * kk, ("tf32" if "TF32" in opcode else "16-bit")
    return None


def _load_kind(ins: Instr) -> str | None:
    op = ins.opcode
    if op.startswith("UTMALDG") or op.startswith("UBLKCP"):
        return "TMA"
    if op.startswith("LDGSTS"):
        width = re.search(r"\.(128|64|32)\b", op)
        return f"cp.async {int(width.group(1)) // 8 if width else 4} B"
    if op.split(".")[0] == "LDG":
        width = re.search(r"\.(128|64|U16|S16|U8|S8)\b", op)
        size = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}.get(width.group(1) if width else "", 4)
        return f"LDG {size} B"
    return None


@dataclass(frozen=True)
class LoopCost:
    """One iteration of one loop, per warp."""

    name: str  # the source loop's comment ("full tiles"), or "loop"
    source_line: int | None  # the `for` of the generated source
    section: int  # which `# ---- ` section of the source holds it (a pass of the plan)
    instructions: int
    mma: int
    mma_flop: int
    tf32_flop: int  # the part of mma_flop done on tf32 operands (half rate)
    mma_kind: str  # "HGMMA" | "HMMA" | ""
    mufu: int
    spills: int  # LDL/STL instructions
    barriers: int
    branches: int  # forward branches inside the body
    loads: dict = field(default_factory=dict)  # kind → count
    wgmma_carried: bool = False  # the iteration's last wgmma is not waited before the back edge

    @property
    def nonmma_per_kflop(self) -> float:
        return (self.instructions - self.mma) / (self.mma_flop / 1000) if self.mma_flop else float("inf")

    @property
    def operands(self) -> str:
        """"16-bit", "tf32", "mixed" or "" (no MMA)."""
        if not self.mma_flop:
            return ""
        return "16-bit" if not self.tf32_flop else "tf32" if self.tf32_flop == self.mma_flop else "mixed"

    def cycles(self, capability: int) -> dict[str, float]:
        """Per-warp shares of the SM's cycles (multiply by the warps for a CTA's)."""
        peak = MMA_PEAK.get(capability, 2048)
        tensor = (self.mma_flop - self.tf32_flop) / peak + self.tf32_flop / (peak / 2)
        return {"tensor": tensor, "issue": self.instructions / ISSUE_PER_CLOCK,
                "mufu": self.mufu * WARP / MUFU_PER_CLOCK}

    def ceiling(self, capability: int) -> float:
        """The fraction of 16-bit tensor-core peak the loop can reach (tf32 work counts double)."""
        c = self.cycles(capability)
        return self.mma_flop / MMA_PEAK.get(capability, 2048) / max(c.values()) if self.mma_flop else 0.0

    def bound(self, capability: int) -> str:
        c = self.cycles(capability)
        return max(c, key=c.get)

    @property
    def kv_loads(self) -> str:
        """The global loads of the iteration, widest first ("cp.async 16 B ×16")."""
        order = sorted(self.loads.items(), key=lambda kv: (-_width(kv[0]), kv[0]))
        return ", ".join(f"{k} ×{v}" for k, v in order) or "none"

    @property
    def fast_loads(self) -> bool:
        """Tiles arrive by TMA or 16-byte cp.async, and nothing narrower than 4 bytes is loaded."""
        kinds = set(self.loads)
        return bool(kinds & {"TMA", "cp.async 16 B"}) and not any(_width(k) < 4 for k in kinds)


def _width(kind: str) -> int:
    if kind == "TMA":
        return 128
    m = re.search(r"(\d+) B", kind)
    return int(m.group(1)) if m else 0


def combine(loops: list[LoopCost], name: str) -> LoopCost:
    """Several loops that each run once per key tile (the passes of a plan) as one iteration."""
    if len(loops) == 1:
        return loops[0]
    loads: dict[str, int] = {}
    for lp in loops:
        for k, v in lp.loads.items():
            loads[k] = loads.get(k, 0) + v
    return LoopCost(name, None, -1, sum(lp.instructions for lp in loops), sum(lp.mma for lp in loops),
                    sum(lp.mma_flop for lp in loops), sum(lp.tf32_flop for lp in loops), loops[-1].mma_kind,
                    sum(lp.mufu for lp in loops), sum(lp.spills for lp in loops), sum(lp.barriers for lp in loops),
                    sum(lp.branches for lp in loops), loads, all(lp.wgmma_carried for lp in loops if lp.mma_kind == "HGMMA"))


def source_loops(source: str) -> list[tuple[int, int, str, int]]:
    """``for`` loops of a generated kernel: (first line, last line of the body, comment, section),
    lines 1-based; the section counts the ``# ---- `` headings above the loop (the passes)."""
    lines = source.split("\n")
    out = []
    section = 0
    for i, text in enumerate(lines):
        stripped = text.lstrip()
        if stripped.startswith("# ---- "):
            section += 1
        if not stripped.startswith("for ") or not stripped.rstrip().split("#")[0].rstrip().endswith(":"):
            continue
        indent = len(text) - len(stripped)
        end = i
        for j in range(i + 1, len(lines)):
            body = lines[j]
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            end = j
        comment = text.split("#", 1)[1].strip() if "#" in text else "loop"
        out.append((i + 1, end + 1, comment, section))
    return out


def loop_costs(sass: str, source: str, function: str | None = None) -> list[LoopCost]:
    """The innermost MMA loops of ``function`` in a SASS listing, in address order."""
    instrs, labels = parse_sass(sass, function)
    loops = []
    for k, ins in enumerate(instrs):
        if ins.base != "BRA":
            continue
        m = _TARGET.search(ins.text)
        if not m or m.group(1) not in labels or labels[m.group(1)] > ins.address:
            continue
        start = next(i for i, x in enumerate(instrs) if x.address == labels[m.group(1)])
        # not a loop: the return from an out-of-line block placed after EXIT (the divergent-warp
        # path of a BRA.DIV) into the middle of a loop
        if not any(x.base == "EXIT" for x in instrs[start:k]):
            loops.append((start, k))
    mma_loops = [(a, b) for a, b in loops if any(_mma_flop(x.opcode) for x in instrs[a:b + 1])]
    innermost = [(a, b) for a, b in mma_loops
                 if not any((c, d) != (a, b) and a <= c and d <= b for c, d in mma_loops)]
    src_loops = source_loops(source)
    out = []
    for a, b in innermost:
        body = instrs[a:b + 1]
        out.append(_cost(body, *_name(body, src_loops)))
    return out


def _name(body: list[Instr], src_loops) -> tuple[str, int | None, int]:
    """The innermost source loop most of ``body``'s instructions come from."""
    lines = [x.line for x in body if x.line is not None]
    best = None
    for first, last, comment, section in src_loops:
        inside = sum(first <= ln <= last for ln in lines)
        if lines and inside * 2 >= len(lines) and (best is None or last - first < best[1] - best[0]):
            best = (first, last, comment, section)
    return (best[2], best[0], best[3]) if best else ("loop", None, 0)


def _cost(body: list[Instr], name: str, line: int | None, section: int) -> LoopCost:
    instructions = mma = flop = tf32 = mufu = spills = barriers = branches = 0
    kind = ""
    loads: dict[str, int] = {}
    last_mma = -1
    waits_after: list[int] = []
    for i, ins in enumerate(body):
        if ins.opcode == "NOP":
            continue
        instructions += 1
        f = _mma_flop(ins.opcode)
        if f:
            mma += 1
            flop += f[0]
            tf32 += f[0] if f[1] == "tf32" else 0
            kind = ins.base
            last_mma = i
        elif ins.base == "MUFU":
            mufu += 1
        elif ins.base in ("LDL", "STL"):
            spills += 1
        elif ins.base in ("BAR", "BAR.SYNC"):
            barriers += 1
        elif ins.base == "BRA" and i != len(body) - 1:
            branches += 1
        lk = _load_kind(ins)
        if lk:
            loads[lk] = loads.get(lk, 0) + 1
        if ins.opcode.startswith("WARPGROUP.DEPBAR") and re.search(r",\s*0x0\b", ins.text):
            waits_after.append(i)
    carried = kind == "HGMMA" and not any(w > last_mma for w in waits_after)
    return LoopCost(name, line, section, instructions, mma, flop, tf32, kind, mufu, spills, barriers, branches, loads,
                    carried)


@dataclass(frozen=True)
class KernelPerf:
    """The model's view of one built kernel: its MMA loops and the main one."""

    function: str
    capability: int
    num_warps: int
    loops: tuple[LoopCost, ...]

    @cached_property
    def main(self) -> LoopCost | None:
        """The loop that runs for most tiles: the full-tile loops of every pass combined (one per
        pass; the dK/dV kernel's full query tiles), else the boundary-tile loops, else every MMA
        loop."""
        for kind in ("full", "boundary"):
            chosen = _one_per_pass([lp for lp in self.loops if lp.name.split()[0] == kind])
            if chosen:
                return combine(chosen, chosen[0].name if len(chosen) == 1 else f"{kind} tiles")
        return combine(list(self.loops), "loop") if self.loops else None

    @cached_property
    def boundary(self) -> LoopCost | None:
        """The boundary-tile loops of every pass combined (one per pass), when the main loop is a
        full-tile loop: the tiles the mask is evaluated on (for neighborhood masks, most of them)."""
        main = self.main
        if main is None or main.name.split()[0] != "full":
            return None
        chosen = _one_per_pass([lp for lp in self.loops if lp.name.split()[0] == "boundary"])
        return combine(chosen, chosen[0].name if len(chosen) == 1 else "boundary tiles") if chosen else None


def _one_per_pass(loops: list[LoopCost]) -> list[LoopCost]:
    """Of several loops of one kind, one per pass (source section): a pass's boundary loops before
    and after its full tiles are alike, and only the costlier one counts."""
    by_section: dict[int, LoopCost] = {}
    for lp in loops:
        best = by_section.get(lp.section)
        if best is None or (lp.mma_flop, -lp.instructions) > (best.mma_flop, -best.instructions):
            by_section[lp.section] = lp
    return [by_section[k] for k in sorted(by_section)]


def analyze(cubin: bytes, source: str, function: str, capability: int, num_warps: int) -> KernelPerf:
    """The model's figures for ``function`` in ``cubin`` built from the generated ``source``."""
    return KernelPerf(function, capability, num_warps, tuple(loop_costs(disassemble(cubin), source, function)))


# ---------------------------------------------------------------------------- targets (issue 15)

CORE = ("full", "causal", "sliding_window", "document")  # the variants FlexAttention users time first


@dataclass(frozen=True)
class Target:
    """What the model must show for one kind of build."""

    min_ceiling: float
    max_per_kflop: float | None = None
    fast_loads: bool = False  # K/V by TMA or 16-byte cp.async
    carried: bool = False  # the iteration's last wgmma still in flight at the back edge
    no_loop_spills: bool = False
    wgmma: bool = False
    min_stages: int = 1


def target_for(variant: str, function: str, capability: int, dtype: str, head_dim: int) -> Target | None:
    """The target of a build of a library variant (None: nothing is promised for it)."""
    if dtype not in ("float16", "bfloat16") or head_dim not in (64, 128):
        return None
    if function == "attnc_fwd":
        if capability == 90:
            return Target(0.90, 1.0, True, True, True) if variant in CORE else Target(0.60)
        return Target(0.90) if capability == 80 and variant in CORE else None
    if capability == 90 and variant in ("causal", "full"):
        return Target(0.60, wgmma=True, min_stages=2)
    return None


def target_problems(target: Target, kernel: KernelPerf, num_stages: int) -> list[str]:
    """How ``kernel``'s main loop misses ``target`` (empty when it meets it)."""
    m = kernel.main
    if m is None:
        return ["no loop with matrix instructions"]
    cap = kernel.capability
    out = []
    if m.ceiling(cap) < target.min_ceiling:
        out.append(f"issue-bound ceiling {m.ceiling(cap):.0%} < {target.min_ceiling:.0%} ({m.bound(cap)}-bound)")
    if target.max_per_kflop is not None and m.nonmma_per_kflop > target.max_per_kflop:
        out.append(f"{m.nonmma_per_kflop:.2f} non-MMA instructions per 1k MMA FLOP > {target.max_per_kflop}")
    if target.fast_loads and not m.fast_loads:
        out.append(f"K/V loads are {m.kv_loads}, not TMA or 16-byte cp.async")
    if target.carried and not m.wgmma_carried:
        out.append("the wgmma is waited inside the iteration")
    if target.no_loop_spills and m.spills:
        out.append(f"{m.spills} spill instructions in the loop")
    if target.wgmma and not all(lp.mma_kind == "HGMMA" for lp in kernel.loops):
        out.append("a loop uses HMMA, not wgmma")
    if num_stages < target.min_stages:
        out.append(f"{num_stages} pipeline stage(s) < {target.min_stages}")
    return out


# ---------------------------------------------------------------------------- reports

def describe(job, result) -> str:
    """One line per build: the main loop's figures and the target's verdict."""
    c = job.config
    head = (f"{job.variant} {job.function.removeprefix('attnc_')} sm_{job.capability} {job.dtype} D={job.head_dim} "
            f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}")
    if isinstance(result, str):
        return f"FAILED {head}: {result}"
    kp: KernelPerf = result.perf
    m = kp.main
    if m is None:
        return f"NO-MMA {head}"
    target = target_for(job.variant, job.function, job.capability, job.dtype, job.head_dim)
    problems = target_problems(target, kp, c.num_stages) if target else []
    verdict = "MISS " if problems else ("ok   " if target else "     ")
    return (f"{verdict}{head}: {m.name} {m.instructions} instr/iter, {m.mma} {m.mma_kind or 'no MMA'} "
            f"({m.operands}), {m.nonmma_per_kflop:.2f} per 1k FLOP, ceiling {m.ceiling(kp.capability):.0%} "
            f"({m.bound(kp.capability)}), wgmma {'carried' if m.wgmma_carried else 'waited' if m.mma_kind == 'HGMMA' else '-'}, "
            f"loads {m.kv_loads}, loop spills {m.spills}, REG {result.registers}, spilled {result.spilled_bytes} B"
            + (f" — {'; '.join(problems)}" if problems else ""))


def markdown(results: dict) -> str:
    """The model's tables for ``docs/performance.md``: per kernel kind, the main loop's ceiling and
    non-MMA instructions per 1k MMA FLOP for each (arch, dtype, D); then every build in detail."""
    builds = [(job, r) for job, r in results.items()]
    kinds = sorted({job.function for job, _ in builds}, key=lambda f: (f != "attnc_fwd", f))
    cases = sorted({(job.capability, job.dtype, job.head_dim) for job, _ in builds}, key=lambda t: (-t[0], t[1], t[2]))
    out = []
    for fn in kinds:
        out += [f"**{fn}** — main loop: ceiling / non-MMA instructions per 1k MMA FLOP, then the boundary-tile "
                f"loop's ceiling in parentheses (**bold**: below its target; `*` spill instructions in the main loop)",
                ""]
        header = "| variant | " + " | ".join(f"sm_{c} {'fp16' if d == 'float16' else 'bf16' if d == 'bfloat16' else d} D{h}"
                                            for c, d, h in cases) + " |"
        out += [header, "|---|" + "---:|" * len(cases)]
        for variant in sorted({job.variant for job, _ in builds if job.function == fn}):
            cells = []
            for case in cases:
                hit = [(job, r) for job, r in builds if job.function == fn and job.variant == variant
                       and (job.capability, job.dtype, job.head_dim) == case]
                if not hit:
                    cells.append("")
                    continue
                job, r = hit[0]
                if isinstance(r, str) or r.perf.main is None:
                    cells.append("failed" if isinstance(r, str) else "no MMA")
                    continue
                m = r.perf.main
                cell = f"{m.ceiling(job.capability):.0%} / {m.nonmma_per_kflop:.2f}" + ("*" if m.spills else "")
                if r.perf.boundary is not None:
                    cell += f" ({r.perf.boundary.ceiling(job.capability):.0%})"
                target = target_for(job.variant, fn, job.capability, job.dtype, job.head_dim)
                if target and target_problems(target, r.perf, job.config.num_stages):
                    cell = f"**{cell}**"
                cells.append(cell)
            out.append(f"| {variant} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["<details><summary>Every build: tile, loop, instructions per iteration, MMA, loads, spills</summary>", "",
            "| build | tile | loop | instr/iter | MMA | operands | wgmma | K/V loads | loop spills | REG | spilled B | smem B | per 1k | ceiling | bound | boundary loop: instr / ceiling |",
            "|---|---|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for job, r in builds:
        c = job.config
        label = f"{job.variant} {job.function.removeprefix('attnc_')} sm_{job.capability} {job.dtype} D{job.head_dim}"
        tile = f"{c.block_m}×{c.block_n} w{c.num_warps} s{c.num_stages}"
        if isinstance(r, str) or r.perf.main is None:
            out.append(f"| {label} | {tile} | {'failed' if isinstance(r, str) else 'no MMA'} |" + " |" * 13)
            continue
        m, b = r.perf.main, r.perf.boundary
        wg = "carried" if m.wgmma_carried else "waited" if m.mma_kind == "HGMMA" else "—"
        bcell = f"{b.instructions} / {b.ceiling(job.capability):.0%}" if b is not None else "—"
        out.append(f"| {label} | {tile} | {m.name} | {m.instructions} | {m.mma} {m.mma_kind} | {m.operands} | {wg} | "
                   f"{m.kv_loads} | {m.spills} | {r.registers} | {r.spilled_bytes} | {r.shared_bytes} | "
                   f"{m.nonmma_per_kflop:.2f} | {m.ceiling(job.capability):.0%} | {m.bound(job.capability)} | {bcell} |")
    out += ["", "</details>"]
    return "\n".join(out)
