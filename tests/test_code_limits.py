"""The code stays readable: no module in proxy/ or probes/ over 400 lines without a reason
at its top, no function over 60 lines (no exceptions: a comment does not make one shorter),
and none on the request path with more than six parameters. Measured from the AST, so they
stay true as the code changes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6
# A module past the limit says why on its first line: "# Over 400 lines: <the reason>".
REASON = "# over 400 lines:"
# The wings a request passes through, from the handler to the upstream and back.
REQUEST_PATH = ("proxy/http", "proxy/serve", "proxy/decide", "proxy/providers", "proxy/accounting")


def modules() -> list[Path]:
    return sorted(p for d in ("proxy", "probes") for p in (ROOT / d).rglob("*.py"))


def functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len([n for n in names if n.arg not in ("self", "cls")])
    return count + (a.vararg is not None) + (a.kwarg is not None)


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_long_modules_say_why_at_their_top() -> None:
    unexplained = []
    for path in modules():
        lines = path.read_text().splitlines()
        head = [line.strip().lower() for line in lines[:3]]
        if len(lines) > MAX_MODULE_LINES and not any(h.startswith(REASON) for h in head):
            unexplained.append(f"{name(path)}: {len(lines)} lines")
    assert unexplained == []


def too_long(source: str) -> list[str]:
    """``line name: N lines`` for each function over the limit, from its ``def`` line to the
    last line of its body; comments around it change nothing."""
    long = []
    for fn in functions(ast.parse(source)):
        n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if n > MAX_FUNCTION_LINES:
            long.append(f"{fn.lineno} {fn.name}: {n} lines")
    return long


def test_no_function_is_longer_than_sixty_lines() -> None:
    long = [f"{name(p)}:{f}" for p in modules() for f in too_long(p.read_text())]
    assert long == []


def test_no_function_on_the_request_path_takes_more_than_six_parameters() -> None:
    wide = []
    for path in modules():
        if not name(path).startswith(REQUEST_PATH):
            continue
        for fn in functions(ast.parse(path.read_text())):
            if (n := parameters(fn)) > MAX_PARAMETERS:
                wide.append(f"{name(path)}:{fn.lineno} {fn.name}: {n} parameters")
    assert wide == []


def test_a_reason_comment_does_not_exempt_a_long_function() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    source = f"# Over 60 lines: a reason that used to excuse it.\ndef f() -> None:\n{body}"
    assert too_long(source) == [f"2 f: {MAX_FUNCTION_LINES + 1} lines"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param("def f(a, b, *, c): pass", 3, id="keyword-only-count"),
        pytest.param("def f(self, a, *args, **kw): pass", 3, id="self-is-free-varargs-count"),
    ],
)
def test_parameters_are_counted_as_a_reader_would(source: str, expected: int) -> None:
    (fn,) = functions(ast.parse(source))
    assert parameters(fn) == expected


def test_no_two_modules_share_a_name() -> None:
    """A file name says which module it is: no homonyms across wings (``__init__`` and the
    ``__main__`` of a runnable package excepted)."""
    by_stem: dict[str, list[str]] = {}
    for path in modules():
        if path.stem not in ("__init__", "__main__"):
            by_stem.setdefault(path.stem, []).append(name(path))
    assert {s: paths for s, paths in by_stem.items() if len(paths) > 1} == {}
