"""The command line: `attnc list` and `attnc explain`, in-process and as a real subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnc
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
    assert max(len(line) for line in lines) <= 100  # fits a 100-column terminal
    heads = [k for k, line in enumerate(lines) if not line.startswith(" ")]
    assert len(heads) == len(names())
    for name, start, end in zip(names(), heads, heads[1:] + [len(lines)]):
        assert lines[start].split()[0] == name  # first: `attnc list | cut -d' ' -f1` gives the names
        math = " ".join(lines[start + 1:end])
        assert math.strip(), name  # its line of math from the file's header


def test_help_does_not_import_torch():
    """`attnc --help` answers without loading torch or the compiler (lazy imports)."""
    code = "import sys; from attnc.runtime import cli\ntry:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n" \
           "assert 'torch' not in sys.modules, 'torch imported'; assert 'sympy' not in sys.modules"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]


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


# ---------------------------------------------------------------------------- compile / check / demo

STANDALONE_RUN = r"""
import sys
sys.modules["attnc"] = None  # any import of attnc inside the kernel file now fails
sys.path.insert(0, {dir!r})
import torch
import {module} as kernel
torch.manual_seed(0)
q = torch.randn(1, 2, 21, 16, dtype=torch.{dtype})
k = torch.randn(1, 1, 19, 16, dtype=torch.{dtype})
v = torch.randn(1, 1, 19, 24, dtype=torch.{dtype})
out = kernel.attention(q, k, v{args})
torch.save(out, {out!r})
"""


@pytest.mark.parametrize(("variant", "dtype", "params"), [
    ("sliding_window", "float16", {"window": 5}),
    ("softmax_sink", "float32", {"sink": "torch.randn(2)"}),
    ("document", "float32", {"doc": "torch.tensor([[0] * 9 + [1] * 10])"}),
    ("sigmoid_attention", "bfloat16", {}),
])
def test_compiled_file_runs_standalone_and_matches_the_reference(capsys, tmp_path, variant, dtype, params):
    import torch

    import attnc

    path = tmp_path / f"{variant}_kernel.py"
    code, out, err = run(capsys, "compile", variant, "-o", str(path), "--dtype", dtype)
    assert code == 0, err
    assert str(path) in out and path.exists()
    text = path.read_text()
    assert "import attnc" not in text and "from attnc" not in text
    args = "".join(f", {k}={v}" for k, v in params.items())
    result = tmp_path / "out.pt"
    script = STANDALONE_RUN.format(dir=str(tmp_path), module=path.stem, dtype=dtype, args=args, out=str(result))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(result)
    torch.manual_seed(0)
    tdt = getattr(torch, dtype)
    q, k = torch.randn(1, 2, 21, 16, dtype=tdt), torch.randn(1, 1, 19, 16, dtype=tdt)
    v = torch.randn(1, 1, 19, 24, dtype=tdt)
    # the same parameter tensors, drawn after q/k/v from the same seed as in the script
    values = {name: eval(expr, {"torch": torch}) if isinstance(expr, str) else expr  # noqa: S307 (test data)
              for name, expr in params.items()}
    ref = attnc.load(variant).reference(q, k, v, **values)
    bound = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}[dtype]
    assert got.dtype == tdt and got.shape == ref.shape
    assert (got.double() - ref).norm() <= bound * ref.norm()


def test_compile_rejects_a_bad_spec_without_writing(capsys, tmp_path):
    bad = tmp_path / "bad.attn"
    bad.write_text("attention a:\n    mask = kv_idx <= q_idx +\n")
    out_file = tmp_path / "k.py"
    code, _, err = run(capsys, "compile", str(bad), "-o", str(out_file))
    assert code == 1 and "bad.attn:2:" in err
    assert not out_file.exists()


def test_check_passes_and_prints_the_error(capsys):
    code, out, _ = run(capsys, "check", "causal", "--nq", "9", "--nkv", "13", "--head-dim", "16",
                       "--batch", "1", "--heads", "2", "--kv-heads", "1")
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("causal")]
    assert len(lines) == 3 and all("PASS" in ln and "rel err" in ln for ln in lines)
    assert out.strip().endswith("PASS")


def test_check_fails_with_nonzero_exit_when_the_kernel_is_wrong(capsys, monkeypatch):
    # a kernel that drops the last key: the reference disagrees, so check must say FAIL
    import attnc.runtime.compiler as compiler

    real = compiler.Attention.__call__

    def wrong(self, q, k, v, **kw):
        return real(self, q, k[:, :, :-1], v[:, :, :-1], **kw)

    monkeypatch.setattr(compiler.Attention, "__call__", wrong)
    code, out, _ = run(capsys, "check", "softmax", "--dtype", "float32", "--nq", "5", "--head-dim", "16",
                       "--batch", "1", "--heads", "1", "--kv-heads", "1")
    assert code == 1
    assert "FAIL" in out


def test_check_with_param_and_bad_param(capsys):
    code, out, _ = run(capsys, "check", "sliding_window", "--dtype", "float32", "--nq", "20", "--head-dim", "16",
                       "--batch", "1", "--heads", "1", "--kv-heads", "1", "--param", "window=3")
    assert code == 0 and "PASS" in out
    code, _, err = run(capsys, "check", "sliding_window", "--dtype", "float32", "--param", "windw=3")
    assert code == 2 and "windw" in err and "window" in err


@pytest.mark.parametrize("name, said", [("natten2d", "Nq = Nkv = 36, width = 4"),
                                        ("natten3d", "Nq = Nkv = 36, height = 3, width = 3")])
def test_check_fits_a_grid_variants_length_and_says_so(capsys, name, said):
    """Issue 21: the default length (37, prime) is no whole grid; the check picks the nearest one
    and the grid parameters without a default — one whose mask is neither empty nor full (a 6 × 6
    grid would let natten2d's default 7 × 7 window keep every pair) — and says which, with every
    parameter's value."""
    import re

    from attnc.runtime.reference import reference_keep

    code, out, err = run(capsys, "check", name, "--dtype", "float32", "--batch", "1", "--heads", "1",
                         "--kv-heads", "1", "--head-dim", "16")
    assert code == 0, err
    assert f"{name}: a grid variant, whose sizes must multiply to the token count: {said}" in out
    assert "kernel_h = " in out and "(default)" in out and "(chosen)" in out
    chosen = {k: int(v) for k, v in re.findall(r"(\w+) = (\d+) \(chosen\)", out)}
    x = torch.zeros(1, 1, 36, 1)
    keep = reference_keep(attnc.load(name).cascade, x, x, x, **chosen)
    assert keep.any() and not keep.all()
    assert out.strip().endswith("PASS")


def test_check_keeps_an_explicit_length_and_its_grid_error(capsys):
    # --nq 37 given: the width is chosen to divide it (37 × 1); a --param width that cannot: today's error
    code, out, err = run(capsys, "check", "natten2d", "--dtype", "float32", "--nq", "37", "--batch", "1",
                         "--heads", "1", "--kv-heads", "1", "--head-dim", "16")
    assert code == 0 and "Nq = Nkv = 37, width = " in out, err
    code, out, err = run(capsys, "check", "natten2d", "--dtype", "float32", "--nq", "37", "--param", "width=5")
    assert code == 2 and "is 7 × 5 = 35 tokens" in err and "must multiply to the token count" in err


def test_list_names_come_first_for_scripts(capsys):
    """The acceptance loop of issue 21 reads the names as `attnc list | cut -d' ' -f1`; `--names`
    prints them alone."""
    code, out, _ = run(capsys, "list")
    words = [line.split(" ")[0] for line in out.splitlines()]
    assert [w for w in words if w] == names()
    code, out, _ = run(capsys, "list", "--names")
    assert code == 0 and out.split("\n") == [*names(), ""]


def test_check_examples_runs_the_property_kit(capsys):
    code, out, _ = run(capsys, "check", "sliding_window", "--examples", "4", "--dtype", "float32",
                       "--param", "window=3")
    assert code == 0 and "4 drawn problems  PASS" in out


def test_check_examples_tests_the_properties_named(capsys):
    code, out, _ = run(capsys, "check", "causal", "--examples", "2", "--dtype", "float32",
                       "--property", "masked_keys", "--property", "empty_rows")
    assert code == 0 and "causal                   2 drawn problems  PASS  [masked_keys, empty_rows]" in out


def test_check_skips_a_property_the_definition_does_not_promise(capsys):
    code, out, _ = run(capsys, "check", "alibi", "--examples", "1", "--dtype", "float32",
                       "--property", "head_permutation", "--property", "batch_split")
    assert code == 0
    assert "alibi                    head_permutation: SKIP (it reads `h` other than as the index" in out
    assert "1 drawn problems  PASS  [batch_split]" in out


def test_check_property_errors_name_the_option(capsys):
    code, _, err = run(capsys, "check", "causal", "--examples", "1", "--property", "batch")
    assert code == 2 and "--property: unknown property 'batch'; choose from reference, batch_split" in err
    code, _, err = run(capsys, "check", "causal", "--property", "masked_keys")
    assert code == 2 and "--property needs --examples N" in err


def test_check_property_failure_prints_the_report_and_exits_1(capsys, monkeypatch):
    # A "kernel" (the reference, so that shrinking is fast) that leaves empty rows NaN.
    import torch

    import attnc.runtime.compiler as compiler

    def nan_on_empty_rows(self, q, k, v, *, scale=None, return_lse=False, **params):
        out, lse = self.reference(q, k, v, scale=scale, return_lse=True, **params)
        out = torch.where(torch.isneginf(lse)[..., None], float("nan"), out).to(q.dtype)
        return (out, lse.float()) if return_lse else out

    monkeypatch.setattr(compiler.Attention, "__call__", nan_on_empty_rows)
    code, out, _ = run(capsys, "check", "causal", "--examples", "20", "--dtype", "float32", "--property", "empty_rows")
    assert code == 1 and "causal                   FAIL" in out
    assert "causal: property `empty_rows` fails: a row with no kept key is not exactly 0" in out
    assert "that row keeps none of the 1 keys (an empty row)" in out  # shrunk to one key


def test_explain_shows_the_backward_plan(capsys):
    code, out, _ = run(capsys, "explain", "softmax")
    assert code == 0
    back = out[out.index("backward:"):]
    assert "saves per row: m, z, has_key" in back
    assert "0 backward passes over the keys" in back  # FlashAttention's D = dO·O, derived
    assert "G.z[i] = (dl[i] - dout[i]) / z[i]" in back and "∂out/∂m = 0" in back
    assert "ds = " in back and "dqk = ds[i, j] * scale" in back


def test_explain_clipped_softmax_backward_needs_a_pass(capsys):
    code, out, _ = run(capsys, "explain", "clipped_softmax")
    assert code == 0
    back = out[out.index("backward:"):]
    assert "1 backward pass over the keys" in back and "pass 1: T1[i] = sum_j{keep}(" in back


def test_explain_says_when_no_backward_exists(capsys, tmp_path):
    spec = tmp_path / "minmax.attn"
    spec.write_text("norm minmax:\n    mx[i] = max(s[i, j] for j)\n    mn[i] = min(s[i, j] for j)\n"
                    "    out[i] = sum((s[i, j] - mn[i]) / (mx[i] - mn[i] + 1.0) * v[j] for j)\n")
    code, out, _ = run(capsys, "explain", str(spec))
    assert code == 0  # the forward plan is still explained
    assert "backward:\n  not derivable: the result depends on `mn` = min_j(...)" in out
