"""Unusual arguments get a clean error naming the argument, or are accepted and mean what they say
(issue 16, items 13, 14 and 15): meta and sparse tensors, numpy and 0-d tensor scalars, CLI
options, `@attnc.jit` names and defaults, spec text that is empty or one line long."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnc
from attnc.dsl.errors import SpecError
from attnc.runtime import cli


@pytest.fixture(scope="module")
def window():
    return attnc.load("sliding_window")


def _qkv(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, n, 16, generator=g) for _ in range(3))


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("kind", ["meta", "sparse"])
def test_meta_and_sparse_inputs_are_refused_by_name(window, which, kind):
    args = list(_qkv())
    args[which] = torch.empty(1, 2, 6, 16, device="meta") if kind == "meta" else args[which].to_sparse()
    with pytest.raises(ValueError, match=f"`{'qkv'[which]}` is .*{kind}"):
        window(*args, window=3)


@pytest.mark.parametrize("value", [np.int64(3), np.int32(3), torch.tensor(3), 3.0])
def test_numpy_and_tensor_scalars_as_int_parameters(window, value):
    q, k, v = _qkv()
    want = window.reference(q, k, v, window=3)
    assert torch.allclose(window(q, k, v, window=value).double(), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [np.float32(0.25), np.float64(0.25), torch.tensor(0.25)])
def test_numpy_and_tensor_scalars_as_scale_and_float_parameters(scale):
    attn = attnc.load("softcap")
    q, k, v = _qkv(seed=1)
    want = attn.reference(q, k, v, scale=0.25, cap=0.5)
    got = attn(q, k, v, scale=scale, cap=np.float32(0.5) if isinstance(scale, np.generic) else torch.tensor(0.5))
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)


def test_a_scalar_that_requires_grad_is_refused_not_detached():
    attn = attnc.load("softcap")
    cap = torch.tensor(5.0, requires_grad=True)
    with pytest.raises(ValueError, match="`cap`.*requires grad"):
        attn(*_qkv(), cap=cap)
    with torch.no_grad():  # no gradient asked for: the value is used
        assert torch.isfinite(attn(*_qkv(), cap=cap)).all()


@pytest.mark.parametrize("cap", [0.0, -0.0, 1e-45])
def test_a_zero_divisor_scalar_computes_as_the_gpu_does(cap):
    """`score / cap` with cap = 0: float32 IEEE (x/0 = ±inf, tanh(±inf) = ±1, 0·±1 = 0), as the
    reference and a GPU compute it; the interpreter used to raise ZeroDivisionError on `1.0 / cap`
    because it kept float scalars as Python floats."""
    attn = attnc.load("softcap")
    q, k, v = _qkv(seed=2)
    want = attn.reference(q, k, v, cap=cap)
    assert torch.isfinite(want).all()
    got = attn(q, k, v, cap=cap)
    assert torch.allclose(got.double(), want, atol=1e-5, rtol=1e-5)


def test_wide_int_tensor_parameters_are_range_checked_not_wrapped():
    """Document ids 0 and 2**32 are two documents: a kernel reading them as int32 would see one.
    Out of int32 they are refused by name; in range, a wide dtype matches the reference."""
    attn = attnc.load("document")
    q, k, v = _qkv(n=8, seed=3)
    ids = torch.tensor([[0, 0, 0, 7, 7, 9, 9, 9]], dtype=torch.int64)
    want = attn.reference(q, k, v, doc=ids)
    assert torch.allclose(attn(q, k, v, doc=ids).double(), want, atol=1e-5, rtol=1e-5)
    wide = ids.clone()
    wide[0, 3:] += 2**32
    with pytest.raises(ValueError, match="`doc` holds 4294967305, beyond int32"):
        attn(q, k, v, doc=wide)
    with pytest.raises(ValueError, match="`doc` holds -2147483649, beyond int32"):
        attn(q, k, v, doc=ids - 2**31 - 1)
    qg = q.clone().requires_grad_()
    with pytest.raises(ValueError, match="`doc`.*beyond int32"):
        attn(qg, k, v, doc=wide).sum().backward()


@pytest.mark.parametrize("name", ["uint16", "uint32", "uint64"])
def test_partly_supported_unsigned_dtypes_are_refused_by_name(name):
    attn = attnc.load("document")
    ids = torch.zeros(1, 8, dtype=getattr(torch, name))
    with pytest.raises(TypeError, match=f"`doc` has dtype torch.{name}.*int32 or int64"):
        attn(*_qkv(n=8), doc=ids)


@pytest.mark.parametrize("argv", [
    ["check", "causal", "--nq", "-5"],
    ["check", "causal", "--head-dim", "0"],
    ["check", "causal", "--device", "foo"],
    ["check", "causal", "--examples", "0"],
    ["check", "causal", "--seed", str(2**70)],
    pytest.param(["check", "causal", "--device", "cuda"],
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_cli_bad_options_are_one_line_errors(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: argument --"), err


def test_cli_bad_param_is_a_one_line_error(capsys):
    assert cli.main(["check", "sliding_window", "--param", "=3"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--param takes name=value" in err


def test_cli_repeated_param_is_refused(capsys):
    assert cli.main(["check", "sliding_window", "--param", "window=3", "--param", "window=5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --param window is given twice (3 and 5); give it once"


@pytest.mark.parametrize("argv, says", [
    (["check", "causal", "--nq", "99999999999"], "score pairs; the float64 reference"),
    (["check", "causal", "--head-dim", "300"], "head dims must be 1..256"),
    (["show", "causal", "--nq", "100000000", "--no-visits"], "evaluates every pair"),
])
def test_cli_sizes_beyond_what_can_run_are_refused_at_once(capsys, argv, says):
    """Sizes past the cap are refused before any allocation (they used to end in an allocation
    traceback, or run until killed)."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and says in err, err


def test_show_output_directory_is_not_created(tmp_path, capsys):
    pytest.importorskip("PIL")
    target = tmp_path / "missing" / "m.png"
    assert cli.main(["show", "causal", "--nq", "32", "--no-visits", "-o", str(target)]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
    assert cli.main(["show", "causal", "--nq", "32", "--no-visits", "-o", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_property_help_lists_gradients(capsys):
    with pytest.raises(SystemExit):
        cli.main(["check", "--help"])
    assert "gradients" in capsys.readouterr().out


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "# only a comment"])
def test_text_without_a_definition_says_so(text):
    with pytest.raises(SpecError, match="no definition"):
        attnc.compile(text)


def test_one_line_spec_text_is_not_taken_for_a_path():
    attn = attnc.compile("mask near = q_idx - kv_idx < 2 and kv_idx <= q_idx")
    q, k, v = _qkv()
    assert torch.allclose(attn(q, k, v).double(), attn.reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_int32_minimum_literal_is_accepted():
    attn = attnc.compile("attention a(w: int = -2147483648):\n    mask = kv_idx - q_idx > w\n", name="a")
    q, k, v = _qkv()
    assert torch.allclose(attn(q, k, v).double(), attn.reference(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("literal", ["1e300", "3.5e38", "-1e39"])
def test_float_literals_past_float32_are_refused(literal):
    with pytest.raises(SpecError, match="too large for a float"):
        attnc.compile(f"attention a:\n    score = score * {literal}\n", name="a")


def _score_with_default(default):
    def biased(score, b, h, q_idx, kv_idx, w=default):
        return score * w
    return biased


@pytest.mark.parametrize("default", [math.inf, -math.inf, math.nan, 1e300, 2**40])
def test_jit_bad_defaults_are_spec_errors_at_the_users_line(default):
    fn = _score_with_default(default)
    with pytest.raises(SpecError, match="default of `w`") as err:
        attnc.jit(fn)
    assert err.value.file == __file__ and err.value.line == fn.__code__.co_firstlineno


def test_jit_non_ascii_parameter_is_a_spec_error_at_the_users_line():
    def scaled(score, b, h, q_idx, kv_idx, wé=1.0):  # noqa: PLC2401 (the point of the test)
        return score * wé

    with pytest.raises(SpecError, match="not ASCII") as err:
        attnc.jit(scaled)
    assert err.value.file == __file__


@pytest.mark.parametrize("name", [3, "a\nb", "é", "1a", ""])
def test_jit_bad_names_are_refused(name):
    def plain(score, b, h, q_idx, kv_idx):
        return score

    with pytest.raises(TypeError, match="`name`"):
        attnc.jit(name=name)(plain)


def test_jit_parameter_shadowing_a_module_is_a_spec_error_at_the_users_line():
    def shadow(score, b, h, q_idx, kv_idx, torch: float = 1.0):
        return torch.tanh(score)

    with pytest.raises(SpecError, match="shadows that module") as info:
        attnc.jit(shadow)(*_qkv())
    assert info.value.span is not None and "torch.tanh(score)" in str(info.value)


@pytest.mark.parametrize("target", ["dir", "link", "empty", "fifo"])
def test_compile_output_is_never_a_device_link_or_directory(tmp_path, capsys, target):
    """`attnc compile -o` replaces a regular file only (it renames a temporary file onto the
    path): a directory, a symlink, a FIFO (standing in for a device node) or an empty path is
    refused, and nothing is written."""
    import os

    path = tmp_path / "out.py"
    if target == "dir":
        path.mkdir()
    elif target == "link":
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me")
        path.symlink_to(victim)
    elif target == "fifo":
        os.mkfifo(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    arg = "" if target == "empty" else str(path)
    assert cli.main(["compile", "causal", "-o", arg]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: -o")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if target == "link":
        assert (tmp_path / "victim.txt").read_text() == "keep me"


@pytest.mark.parametrize("text", ["mask m = (q_idx - kv_idx) % 3 == 0\n", "mask m = (kv_idx - q_idx) % 5 == 1\n",
                                  "mask m = (q_idx + kv_idx) % 2 == 0 and kv_idx <= q_idx\n"])
def test_literal_modulus_masks_run(text):
    """A congruence with a literal modulus: the kernel's ⌈2^32/m⌉ was computed in int32 and the
    interpreter refused 4294967295 (an adversarial pass's valid input)."""
    attn = attnc.compile(text)
    q, k, v = (x.requires_grad_() for x in _qkv(n=40, seed=4))
    out = attn(q, k, v)
    want = attn.reference(q.detach(), k.detach(), v.detach())
    assert torch.allclose(out.double(), want, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_varlen_strided_or_meta_offsets():
    """cu_seqlens read at unit stride by the kernels: a strided view (every other element) is
    made contiguous, not read past its end (it corrupted the heap); a meta tensor is refused."""
    attn = attnc.load("sliding_window")
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(12, 2, 16, generator=g) for _ in range(3))
    cu = torch.tensor([0, 99, 4, 99, 12, 99], dtype=torch.int32)[::2]
    got = attn.varlen(q, k, v, cu, cu, window=4)
    want = attn.varlen(q, k, v, cu.contiguous(), cu.contiguous(), window=4)
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="`cu_seqlens_q` is on the meta device"):
        attn.varlen(q, k, v, torch.empty(3, dtype=torch.int32, device="meta"), cu, window=4)


def test_grid_variant_parameters_leaving_int32_are_refused():
    """natten2d with dilation_h = 2**31 - 1: the variant's own index arithmetic (as the reference
    computes it) leaves int32 although the per-axis permuted kernel's does not — refused, not a
    wrong answer (an adversarial pass's rel. error 0.87)."""
    attn = attnc.load("natten2d")
    q, k, v = _qkv(n=16, seed=7)
    with pytest.raises(ValueError, match="beyond int32"):
        attn(q, k, v, width=4, dilation_h=2**31 - 1)


@pytest.mark.parametrize("kind", ["sparse", "meta"])
def test_tensor_and_scalar_parameters_without_values_are_refused_by_name(kind):
    ids = torch.zeros(1, 8, dtype=torch.int64)
    ids = ids.to_sparse() if kind == "sparse" else ids.to("meta")
    with pytest.raises(ValueError, match=f"parameter `doc` is .*{kind}"):
        attnc.load("document")(*_qkv(n=8), doc=ids)
    if kind == "meta":
        with pytest.raises(ValueError, match="parameter `cap` is on the meta device"):
            attnc.load("softcap")(*_qkv(), cap=torch.tensor(3.0, device="meta"))


def test_nested_inputs_are_refused_by_name():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: nested tensors are a prototype
        nt = torch.nested.nested_tensor([torch.randn(2, 8, 16), torch.randn(2, 6, 16)])
    with pytest.raises(ValueError, match="`q` is a nested tensor"):
        attnc.load("causal")(nt, nt, nt)


@pytest.mark.parametrize("make", [lambda: attnc.compile("score sc = score / 0.0\n"),
                                  lambda: attnc.compile("score sc = score / -0.0 + 1.0\n"),
                                  lambda: attnc.jit(lambda score, b, h, q_idx, kv_idx: score / 0)])
def test_division_by_a_literal_zero_is_ieee_not_a_fault(make):
    """`x / 0.0` is ±inf (NaN at 0) as in IEEE; the generated `1.0 / 0.0` raised ZeroDivisionError
    in the interpreter (and in Triton's constant folding)."""
    out = make()(*_qkv())
    assert out.shape == (1, 2, 6, 16)


def test_traced_expressions_past_the_node_limit_are_refused_quickly():
    """`x = x + x` sixty times is a 2^61-node tree behind a 60-node graph: refused at the user's
    line as it is traced (it timed out), as is a 10,000-step chain (it raised RecursionError)."""
    import time

    def doubling(score, b, h, q_idx, kv_idx):
        x = score
        for _ in range(60):
            x = x + x
        return x

    def chain(score, b, h, q_idx, kv_idx):
        x = score
        for _ in range(5000):
            x = x * 1.0 + 0.0
        return x

    for fn in (doubling, chain):
        start = time.perf_counter()
        with pytest.raises(SpecError, match="expression of .* nodes") as info:
            attnc.jit(fn)(*_qkv())
        assert time.perf_counter() - start < 20 and info.value.span is not None


def test_spec_text_is_bounded_like_files():
    from attnc.dsl.loader import MAX_SPEC_BYTES

    text = "mask m = q_idx >= kv_idx\n" * (MAX_SPEC_BYTES // 20)
    with pytest.raises(SpecError, match="bytes; the limit is"):
        attnc.compile(text)
    assert attnc.compile("\ufeffmask m = q_idx >= kv_idx\n").name == "m"  # a byte-order mark, as in files
    with pytest.raises(SpecError, match="cannot open spec file"):
        attnc.compile("\x00")


def test_a_link_named_attn_to_another_file_is_not_quoted(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    link = tmp_path / "looks.attn"
    link.symlink_to(secret)
    with pytest.raises(SpecError) as info:
        attnc.compile(str(link))
    assert "root:x" not in str(info.value) and "is not a spec" in str(info.value)


@pytest.mark.parametrize("kw", [{"cap": 1e39}, {"scale": -1e39}])
def test_floats_past_float32_are_refused_not_made_inf(kw):
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"`{name}` = .* beyond float32's range"):
        attnc.load("softcap")(*_qkv(), **kw)


def test_float64_tensor_parameters_past_float32_are_refused():
    attn = attnc.compile("score sb(t: tensor[N_KV] float) = score + t[kv_idx]\n")
    with pytest.raises(ValueError, match="`t` holds 1e\\+300, beyond float32's range"):
        attn(*_qkv(), t=torch.full((6,), 1e300, dtype=torch.float64))


def test_cli_examples_and_long_numbers(capsys):
    assert cli.main(["check", "causal", "--examples", "99999999999"]) == 2
    assert "at most 10000" in capsys.readouterr().err
    assert cli.main(["check", "causal", "--seed", "9" * 10000]) == 2
    err = capsys.readouterr().err
    assert len(err) < 200 and "(10000 characters)" in err


@pytest.mark.parametrize("expr", ["2.0 ** 1000", "1e38 * 10.0", "float(2147483647) * float(2147483647) * 1e20"])
def test_constant_expressions_past_float32_are_refused_at_their_span(expr):
    """As float literals are: in a kernel they would be inf, in the float64 reference finite."""
    with pytest.raises(SpecError, match="beyond float32's range") as info:
        attnc.compile(f"score sc = score + {expr}\n")
    assert info.value.span is not None and info.value.span.line == 1


def test_return_lse_must_be_a_bool():
    with pytest.raises(TypeError, match="`return_lse` is True or False"):
        attnc.load("causal")(*_qkv(), return_lse="no")


def test_jit_keyword_only_parameter_is_a_spec_error():
    def kwonly(score, b, h, q_idx, kv_idx, *, cap: float = 1.0):
        return score * cap

    with pytest.raises(SpecError, match="keyword-only parameter `cap`"):
        attnc.jit(kwonly)(*_qkv())


_TABLE = torch.arange(8).view(2, 4)


@pytest.mark.parametrize("fn, message", [
    (lambda score, b, h, q_idx, kv_idx: score @ score, "no spec meaning on a traced value"),
    (lambda score, b, h, q_idx, kv_idx: round(score), "no spec meaning on a traced value"),
    (lambda score, b, h, q_idx, kv_idx: score + (score << 1), r"`<<` on a float value: it works on two integers"),
    (lambda score, b, h, q_idx, kv_idx: score + (q_idx & (kv_idx > 2)), r"`&` on a bool value: it works on two "
                                                                        r"integers or on two conditions"),
    (lambda score, b, h, q_idx, kv_idx: score + ~score, r"`~` of a float"),
    (lambda score, b, h, q_idx, kv_idx: score + (q_idx ^ _TABLE[b]), r"indexed in 1 of its 2 dimensions"),
    (lambda score, b, h, q_idx, kv_idx: score + (~_TABLE[b]), r"indexed in 1 of its 2 dimensions"),
    (lambda score, b, h, q_idx, kv_idx: score + ((_TABLE[b] * 2) & q_idx).sum(), r"bitwise operators on a traced "
                                                                                   r"vector"),
    (lambda score, b, h, q_idx, kv_idx: score + (q_idx << (_TABLE[b] * 2)).sum(), r"a traced vector .* is combined"),
])
def test_jit_operators_without_spec_meaning_are_spec_errors(fn, message):
    with pytest.raises(SpecError, match=message):
        attnc.jit(fn)(*_qkv())


def test_jit_functools_partial_mask():
    """A partial's bound keywords are constants of the traced function (its name comes from the
    wrapped function; `functools.partial` has no __name__)."""
    import functools

    def near(b, h, q_idx, kv_idx, w):
        return q_idx - kv_idx <= w

    got = attnc.jit(functools.partial(near, w=3))(*_qkv())
    want = attnc.compile("mask m = q_idx - kv_idx <= 3\n")(*_qkv())
    assert torch.equal(got, want)
