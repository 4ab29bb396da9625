"""The command line: `attnc list` and `attnc explain`, in-process and as a real subprocess."""

import subprocess
import sys

import pytest

from attnc.library import names
from attnc.runtime.cli import main
from tests.conftest import library_files


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_library_variant_with_math(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == len(names())
    for name, line in zip(names(), lines):
        assert f" {name}" in line.split("   ")[0]
        assert ("=" in line) or ("keep" in line)


@pytest.mark.parametrize("path", library_files(), ids=lambda p: p.stem)
def test_explain_works_on_every_library_file(capsys, path):
    code, out, err = run(capsys, "explain", str(path))
    assert code == 0, err
    assert "definition:" in out and "cascade:" in out and "plan:" in out
    assert "pass over the keys" in out or "passes over the keys" in out


def test_explain_softmax_reports_one_pass_and_the_rescale(capsys):
    code, out, _ = run(capsys, "explain", "softmax")
    assert code == 0
    assert "1 pass over the keys" in out
    assert "rescaled by exp(m_old - m_new)" in out


def test_explain_clipped_softmax_reports_two_passes_with_the_reason(capsys):
    code, out, _ = run(capsys, "explain", "clipped_softmax")
    assert code == 0
    assert "2 passes over the keys" in out
    assert "needs m, z complete: out cannot run online" in out
    assert "still depends on s" in out


def test_explain_reports_spec_errors_with_location(capsys, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text("mask m = q_idx < kv_idz\n")
    code, out, err = run(capsys, "explain", str(bad))
    assert code == 1 and out == ""
    assert err.startswith(f"{bad}:1:18: error: unknown name `kv_idz`")
    assert "did you mean `kv_idx`" in err and "^^^^^^" in err


def test_explain_unknown_library_name_suggests(capsys):
    code, _, err = run(capsys, "explain", "sofmax")
    assert code == 1 and "did you mean `softmax`" in err


def test_console_entry_point_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "attnc", "explain", "causal"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "keep[i, j]  = j <= i + n_kv - n_q" in proc.stdout
