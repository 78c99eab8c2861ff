#!/usr/bin/env python3
"""Export the notebooks' ``#@save`` definitions into ``d2l_ext``, or check that they are in sync.

d2l's convention: a trailing ``#@save`` on a top-level ``class`` or ``def`` line, or on one of its
decorators' lines, saves that whole definition with its decorators; on a top-level import or
assignment it saves that statement (``ruff format`` writes the mark as ``# @save``; both count).
``notebooks/NN_topic.ipynb`` becomes ``d2l_ext/topic.py``, which has

- a header saying it is generated (a module without it is hand-written and never overwritten);
- ``__all__``: the public names it defines, in notebook order (imports are not its own names);
- before each definition, a comment naming its cell, ``# notebooks/02_resnet.ipynb, cell 7``, so
  that a traceback into the module leads back to the notebook. Cells are counted from 1 over all
  cells, markdown included, from the top of the notebook, as a reader counts them;
- each class in one place: a function saved with ``@d2l.add_to_class(C)`` (the book's way to spread
  a class over cells), where ``C`` is a class saved earlier in the same notebook, becomes an
  ordinary method at the end of ``C``'s body, with its own cell comment, and the decorator is
  dropped: the class ends up with the same methods as in the notebook. It stays a decorated
  top-level function where moving it would change its meaning: ``C`` is decorated or its body
  shares its header's line, ``add_to_class`` is not the outermost decorator, or the function uses
  a ``__private`` name (Python mangles those inside a class body, not outside).

    python tools/export.py           # write the modules
    python tools/export.py --check   # exit 1 if a module differs from what the notebooks give
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = "#@save"
# `ruff format` rewrites a trailing `#@save` as `# @save`; both mark a definition.
MARK_RE = re.compile(r"#\s*@save\s*$")
# Two lines, so that the header stays within the line length that ruff checks.
HEADER = (
    "# Generated from {nb} by tools/export.py.\n# Do not edit: change the notebook and run `make export`."
)
NAME = re.compile(r"^\d\d_(?P<topic>[a-z][a-z0-9_]*)\.ipynb$")
INDENT = "    "


class Chunk:
    """One saved top-level statement of a notebook."""

    def __init__(self, cell: int, node: ast.stmt, lines: list[str]):
        self.cell = cell  # counted from 1 over all cells, as in the cell comment
        self.node = node  # parsed from ``lines``, so its line numbers count from the chunk's start
        self.lines = lines  # decorators included, the save marks removed
        self.methods: list[Chunk] = []  # add_to_class functions moved into this class

    @property
    def is_import(self) -> bool:
        return isinstance(self.node, ast.Import | ast.ImportFrom)


def cell_marker(notebook_rel: str, cell: int) -> str:
    """The comment that precedes a generated definition and names its cell."""
    return f"# {notebook_rel}, cell {cell}"


def _code(cell_source: str) -> str:
    """Cell source as Python: IPython magics and shell lines become blank lines (line numbers kept)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines()
    )


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def saved_chunks(notebook: Path) -> list[Chunk]:
    """The saved top-level statements of ``notebook``, in notebook order."""
    chunks = []
    for n, cell in enumerate(_cells(notebook), start=1):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if not any(MARK_RE.search(line) for line in src.splitlines()):
            continue
        lines = _code(src).splitlines()
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as e:
            raise SystemExit(
                f"{notebook.name}, cell {n} (counted from 1, markdown included): cannot parse ({e})."
            ) from None
        for node in tree.body:
            # The mark sits on the def/class line, on any line of a signature that ruff wrapped,
            # or, as in the book, on a decorator's line: `@d2l.add_to_class(ResNet)  #@save`.
            first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            body = getattr(node, "body", None)
            header_end = max(node.lineno, body[0].lineno - 1) if body else node.lineno
            marked = [i for i in range(first, header_end + 1) if MARK_RE.search(lines[i - 1])]
            if not marked:
                continue
            text = lines[first - 1 : node.end_lineno]
            for i in marked:
                text[i - first] = MARK_RE.sub("", lines[i - 1]).rstrip()
            chunks.append(Chunk(n, ast.parse("\n".join(text)).body[0], text))
    return chunks


def add_to_class_target(node: ast.stmt) -> str | None:
    """``C`` when ``node`` is a function whose outermost decorator is ``[d2l.]add_to_class(C)``."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
        return None
    deco = node.decorator_list[0]
    if not (isinstance(deco, ast.Call) and len(deco.args) == 1 and not deco.keywords):
        return None
    func, arg = deco.func, deco.args[0]
    named = (isinstance(func, ast.Name) and func.id == "add_to_class") or (
        isinstance(func, ast.Attribute) and func.attr == "add_to_class"
    )
    return arg.id if named and isinstance(arg, ast.Name) else None


def _uses_private_names(node: ast.AST) -> bool:
    """Whether the code names a ``__private`` identifier, which a class body would mangle."""

    def private(name) -> bool:
        return isinstance(name, str) and name.startswith("__") and not name.endswith("__")

    for n in ast.walk(node):
        names = [getattr(n, a, None) for a in ("id", "attr", "arg", "name", "asname")]
        if any(map(private, names + list(getattr(n, "names", [])))):  # also global/nonlocal
            return True
    return False


def _string_continuation_lines(node: ast.AST) -> set[int]:
    """Lines (1-based) inside a multi-line string other than a docstring: indenting them would
    change the string's value."""
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(node)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
        and isinstance(n.body[0].value.value, str)
    }
    inside = set()
    for n in ast.walk(node):
        strings = isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
        if strings and id(n) not in docstrings and n.end_lineno > n.lineno:
            inside.update(range(n.lineno + 1, n.end_lineno + 1))
    return inside


def _as_method(chunk: Chunk, marker: str) -> list[str]:
    """The function of ``chunk`` without its add_to_class decorator, indented as a method."""
    deco = chunk.node.decorator_list[0]
    keep = [i for i in range(1, len(chunk.lines) + 1) if not deco.lineno <= i <= deco.end_lineno]
    verbatim = _string_continuation_lines(chunk.node)
    # Outside its class the book must write `super(C, self)`; inside it, `super()` means the same.
    args = chunk.node.args.posonlyargs + chunk.node.args.args
    explicit = (
        re.compile(rf"\bsuper\(\s*{add_to_class_target(chunk.node)}\s*,\s*{args[0].arg}\s*\)")
        if args
        else None
    )
    lines = [(i, chunk.lines[i - 1]) for i in keep]
    lines = [
        (i, line if i in verbatim or not explicit else explicit.sub("super()", line)) for i, line in lines
    ]
    return [INDENT + marker, *(line if i in verbatim or not line else INDENT + line for i, line in lines)]


def _merge_methods(chunks: list[Chunk]) -> list[Chunk]:
    """Move each add_to_class function into its class when that keeps its meaning (module doc)."""
    classes: dict[str, Chunk] = {}
    kept = []
    for chunk in chunks:
        node = chunk.node
        target = classes.get(add_to_class_target(node) or "")
        if target is not None and not _uses_private_names(node):
            target.methods.append(chunk)
            continue
        if isinstance(node, ast.ClassDef):
            one_line = node.body[0].lineno == node.lineno
            if node.decorator_list or one_line:
                classes.pop(node.name, None)
            else:
                classes[node.name] = chunk
        kept.append(chunk)
    return kept


def bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds in the module (imports aside)."""
    if add_to_class_target(node):
        return []  # d2l's add_to_class returns None: the module-level name is no definition
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    targets = {ast.Assign: lambda n: n.targets, ast.AnnAssign: lambda n: [n.target]}
    if type(node) in targets:
        return [n.id for t in targets[type(node)](node) for n in ast.walk(t) if isinstance(n, ast.Name)]
    names = []
    for attr in ("body", "orelse", "finalbody", "handlers"):  # if/try/with/for blocks
        for child in getattr(node, attr, []):
            names += bound_names(child) if isinstance(child, ast.stmt) else []
    return names


def _ruff(text: str, path: Path) -> str:
    """Sort imports and format with ruff, so the module reads like hand-written code."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "--select", "I", "--fix", "--quiet", "--exit-zero"], ["format"]):
        out = subprocess.run(
            [ruff, *args, "--stdin-filename", str(path), "-"],
            input=text,
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if out.returncode:
            raise SystemExit(f"ruff failed on {path.name}:\n{out.stderr}")
        text = out.stdout
    return text


def generate(notebook: Path) -> str | None:
    """The module text for ``notebook``, or None when it saves nothing."""
    chunks = saved_chunks(notebook)
    if not chunks:
        return None
    rel = notebook.relative_to(ROOT).as_posix()
    cells = _cells(notebook)
    title = next(
        (c["source"][0].lstrip("# ").strip() for c in cells if c["cell_type"] == "markdown" and c["source"]),
        notebook.stem,
    )
    imports = dict.fromkeys("\n".join(c.lines) for c in chunks if c.is_import)
    definitions = _merge_methods([c for c in chunks if not c.is_import])
    public = [n for c in definitions for n in bound_names(c.node) if not n.startswith("_")]
    blocks = []
    for chunk in definitions:
        lines = [cell_marker(rel, chunk.cell), *chunk.lines]
        for method in chunk.methods:
            lines += ["", *_as_method(method, cell_marker(rel, method.cell))]
        blocks.append("\n".join(lines))
    parts = [
        HEADER.format(nb=rel),
        f'"""{title}\n\nThe definitions saved from {rel}; the comment above each names its cell\n'
        '(counted from 1, markdown cells included).\n"""',
        "\n".join(imports),
        f"__all__ = {list(dict.fromkeys(public))!r}",
        *blocks,
    ]
    target = ROOT / "d2l_ext" / f"{NAME.match(notebook.name)['topic']}.py"
    return _ruff("\n\n\n".join(p for p in parts if p) + "\n", target)


def is_generated(path: Path) -> bool:
    return path.is_file() and path.read_text().startswith(HEADER.split("{nb}")[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="report differences and exit 1, write nothing")
    args = parser.parse_args(argv)
    wanted: dict[Path, tuple[Path, str]] = {}
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if not NAME.match(nb.name):
            print(f"skipping {nb.name}: notebooks are named NN_topic.ipynb", file=sys.stderr)
            continue
        text = generate(nb)
        if text is not None:
            wanted[ROOT / "d2l_ext" / f"{NAME.match(nb.name)['topic']}.py"] = (nb, text)
    problems = []
    for module, (nb, text) in wanted.items():
        name = module.relative_to(ROOT).as_posix()
        if module.exists() and not is_generated(module):
            problems.append(
                f"{name} is hand-written (no generated header); "
                f"rename {nb.name} or that module, it will not be overwritten."
            )
            continue
        old = module.read_text() if module.exists() else ""
        if old == text:
            continue
        if args.check:
            diff = "".join(
                difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), name, f"{name} (from {nb.name})"
                )
            )
            problems.append(f"{name} differs from what {nb.relative_to(ROOT)} generates:\n{diff}")
        else:
            module.write_text(text)
            print(f"wrote {name} from {nb.relative_to(ROOT)}")
    for module in sorted((ROOT / "d2l_ext").glob("*.py")):
        if is_generated(module) and module not in wanted:
            problems.append(
                f"{module.relative_to(ROOT)} is generated but no notebook saves into it any more; delete it."
            )
    if problems:
        print(
            "notebooks and library are not in sync:\n"
            + "\n".join(problems)
            + "\nRun `make export` and commit the result.",
            file=sys.stderr,
        )
        return 1
    if args.check:
        print(f"{len(wanted)} generated modules match their notebooks.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
