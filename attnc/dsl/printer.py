"""``ast`` → spec text. ``parse(print_module(m)) == m`` (spans aside) for every module.

Parentheses are emitted only where Python precedence needs them, so printed specs read like
hand-written ones.
"""

from __future__ import annotations

from . import ast

# Binding strength, loosest first; mirrors the grammar in attn.lark.
_IF, _OR, _AND, _NOT, _CMP, _BOR, _BXOR, _BAND, _SHIFT, _ADD, _MUL, _UNARY, _POW, _ATOM = range(1, 15)
_BINOP_PREC = {"|": _BOR, "^": _BXOR, "&": _BAND, "<<": _SHIFT, ">>": _SHIFT,
               "+": _ADD, "-": _ADD, "*": _MUL, "/": _MUL, "//": _MUL, "%": _MUL, "**": _POW}


def _prec(e: ast.Expr) -> int:
    if isinstance(e, ast.IfExp):
        return _IF
    if isinstance(e, ast.BoolOp):
        return _OR if e.op == "or" else _AND
    if isinstance(e, ast.Not):
        return _NOT
    if isinstance(e, ast.Compare):
        return _CMP
    if isinstance(e, ast.BinOp):
        return _BINOP_PREC[e.op]
    if isinstance(e, ast.Unary):
        return _UNARY
    return _ATOM


def print_expr(e: ast.Expr, need: int = _IF) -> str:
    text = _expr(e)
    return f"({text})" if _prec(e) < need else text


def _expr(e: ast.Expr) -> str:
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Num):
        return str(e.value) if e.is_int else repr(float(e.value))
    if isinstance(e, ast.Bool):
        return "True" if e.value else "False"
    if isinstance(e, ast.Unary):
        return f"{e.op}{print_expr(e.operand, _UNARY)}"
    if isinstance(e, ast.BinOp):
        p = _BINOP_PREC[e.op]
        if e.op == "**":  # right-associative; the exponent may be a unary minus
            return f"{print_expr(e.left, _ATOM)} ** {print_expr(e.right, _UNARY)}"
        return f"{print_expr(e.left, p)} {e.op} {print_expr(e.right, p + 1)}"
    if isinstance(e, ast.Compare):
        parts = [print_expr(e.operands[0], _BOR)]
        for op, rhs in zip(e.ops, e.operands[1:]):
            parts += [op, print_expr(rhs, _BOR)]
        return " ".join(parts)
    if isinstance(e, ast.BoolOp):
        p = _OR if e.op == "or" else _AND
        return f"{print_expr(e.left, p)} {e.op} {print_expr(e.right, p + 1)}"
    if isinstance(e, ast.Not):
        return f"not {print_expr(e.operand, _NOT)}"
    if isinstance(e, ast.IfExp):
        return f"{print_expr(e.then, _OR)} if {print_expr(e.cond, _OR)} else {print_expr(e.other, _IF)}"
    if isinstance(e, ast.Call):
        args = [print_expr(a) for a in e.args] + [f"{k.name}={print_expr(k.value)}" for k in e.kwargs]
        return f"{e.func}({', '.join(args)})"
    if isinstance(e, ast.Index):
        return f"{e.base}[{', '.join(print_expr(i) for i in e.indices)}]"
    if isinstance(e, ast.Reduce):
        rel = f" {e.rel} {e.bound}" if e.rel is not None else ""
        return f"{e.op}({print_expr(e.body)} for {e.var}{rel})"
    raise TypeError(f"not an expression node: {e!r}")


def print_type(t: ast.ScalarType | ast.TensorType) -> str:
    if isinstance(t, ast.ScalarType):
        return t.kind
    return f"tensor[{', '.join(print_expr(d) for d in t.dims)}] {t.elem}"


def print_params(params: tuple[ast.Param, ...]) -> str:
    if not params:
        return ""
    parts = []
    for p in params:
        text = f"{p.name}: {print_type(p.type)}"
        if p.default is not None:
            text += f" = {print_expr(p.default)}"
        parts.append(text)
    return f"({', '.join(parts)})"


def print_stmt(s: ast.Stmt) -> str:
    if isinstance(s, ast.Let):
        return f"let {s.name} = {print_expr(s.value)}"
    if isinstance(s, ast.Assign):
        return f"{s.target} = {print_expr(s.value)}"
    if isinstance(s, ast.StageAssign):
        return f"{s.name}[{', '.join(s.indices)}] = {print_expr(s.value)}"
    if isinstance(s, ast.Grid):
        text = f"grid ({', '.join(s.axes)}) = ({', '.join(print_expr(x) for x in s.sizes)})"
        if s.dilated is not None:
            text += f" dilated ({', '.join(print_expr(x) for x in s.dilated)})"
        return text
    raise TypeError(f"not a statement: {s!r}")


def print_def(d: ast.Def) -> str:
    head = f"{d.kind} {d.name}{print_params(d.params)}"
    body = d.body
    if d.kind in ("mask", "score") and len(body) == 1 and isinstance(body[0], ast.Assign) and body[0].target == d.kind:
        return f"{head} = {print_expr(body[0].value)}\n"
    return head + ":\n" + "".join(f"    {print_stmt(s)}\n" for s in body)


def print_import(i: ast.Import) -> str:
    source = "library" if i.source is None else f'"{i.source}"'
    return f"from {source} import {', '.join(n.id for n in i.names)}\n"


def print_module(m: ast.Module) -> str:
    chunks = []
    for item in m.items:
        chunks.append(print_import(item) if isinstance(item, ast.Import) else print_def(item))
    return "\n".join(chunks)
