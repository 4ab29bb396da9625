"""``benchmarks/gpu.sh --dry-run``: every phase of the GPU script (correctness check, forward and
training benchmarks) runs on the CPU at tiny sizes, so the script a GPU session runs first is
known to work before a GPU is lent. It writes only to a scratch copy of docs/performance.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_script_dry_run(tmp_path):
    before = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path),
           "ATTNC_CACHE_DIR": str(tmp_path / "cache"), "OUT": str(tmp_path)}
    proc = subprocess.run(["sh", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "gpu.sh --dry-run: all phases ran" in proc.stdout
    report = (tmp_path / "gpu_check.md").read_text(encoding="utf-8")
    assert "## GPU correctness on CPU dry run" in report and " 0 fail, 0 error, 0 skipped" in report
    # context parallelism: 2 gloo ranks sent the bytes the ring's plan says
    assert "`stats()['sent_bytes']` equals the plan" in (tmp_path / "bench_context_parallel.md").read_text(encoding="utf-8")
    assert (ROOT / "docs" / "performance.md").read_text(encoding="utf-8") == before  # a dry run writes no docs
