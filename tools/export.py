#!/usr/bin/env python3
"""Write the notebooks' ``#@save`` definitions into ``d2l_ext``, or check (``--check``) that they are.

As in d2l, a trailing ``#@save`` (``# @save`` after ruff) on a top-level definition's header or
decorator saves the definition, on an import or assignment the statement. ``notebooks/NN_topic.ipynb``
becomes ``d2l_ext/topic.py``: a generated header (a module without it is never overwritten),
``__all__``, and above each definition a comment naming its cell (from 1, markdown included). A
function saved with ``@add_to_class(C)``, ``C`` a class saved earlier, becomes a method at the end of
``C``'s body unless that changes its meaning: ``C`` decorated or on one line, another decorator
outside it, or a ``__private`` name (a class body mangles those).
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
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"\s*#\s*@save\s*$")
# Two lines, so that the header stays within the line length that ruff checks.
HEADER = (
    "# Generated from {nb} by tools/export.py.\n# Do not edit: change the notebook and run `make export`."
)
NAME = re.compile(r"^\d\d_(?P<topic>[a-z][a-z0-9_]*)\.ipynb$")
INDENT = "    "


@dataclass
class Chunk:
    """One saved top-level statement: its cell (from 1), its lines without the marks, parsed."""

    cell: int
    lines: list[str]
    node: ast.stmt
    methods: list[Chunk] = field(default_factory=list)  # add_to_class functions moved into it


def saved_chunks(notebook: Path) -> list[Chunk]:
    """The saved top-level statements of ``notebook``, in notebook order."""
    chunks = []
    for n, cell in enumerate(json.loads(notebook.read_text())["cells"], start=1):
        src = "".join(cell["source"])
        if cell["cell_type"] != "code" or not any(MARK.search(line) for line in src.splitlines()):
            continue
        # IPython magics and shell lines become blank lines, so that line numbers stay.
        lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines()]
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as e:
            raise SystemExit(
                f"{notebook.name}, cell {n} (counted from 1, markdown included): cannot parse ({e})."
            ) from None
        for node in tree.body:
            first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            body = getattr(node, "body", None)
            header_end = max(node.lineno, body[0].lineno - 1) if body else node.lineno
            header = lines[first - 1 : header_end]
            if any(MARK.search(line) for line in header):
                text = [MARK.sub("", line) for line in header] + lines[header_end : node.end_lineno]
                chunks.append(Chunk(n, text, ast.parse("\n".join(text)).body[0]))
    return chunks


def add_to_class_target(node: ast.stmt) -> str | None:
    """``C`` when ``node`` is a function whose outermost decorator is ``[d2l.]add_to_class(C)``."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
        return None
    m = re.fullmatch(r"(.+\.)?add_to_class\(([A-Za-z_]\w*)\)", ast.unparse(node.decorator_list[0]))
    return m and m[2]


def _uses_private_names(node: ast.AST) -> bool:
    """Whether ``node`` names a ``__private`` identifier, which a class body would mangle."""
    for n in ast.walk(node):
        names = [getattr(n, a, None) for a in ("id", "attr", "arg", "name", "asname")]
        names += getattr(n, "names", [])  # global and nonlocal
        if any(isinstance(s, str) and s.startswith("__") and not s.endswith("__") for s in names):
            return True
    return False


def _as_method(chunk: Chunk, marker: str) -> list[str]:
    """The function of ``chunk`` without its add_to_class decorator, indented as a method."""
    node = chunk.node
    defs = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef
    docs = [n.body[0].value for n in ast.walk(node) if isinstance(n, defs) and ast.get_docstring(n, False)]
    # Indenting a line inside a multi-line string (a docstring aside) would change its value.
    verbatim = {
        i
        for n in ast.walk(node)
        if isinstance(n, ast.JoinedStr) or (isinstance(n, ast.Constant) and isinstance(n.value, str))
        if not any(n is doc for doc in docs)
        for i in range(n.lineno + 1, n.end_lineno + 1)
    }
    # Outside its class the book must write `super(C, self)`; inside it, `super()` means the same.
    args = node.args.posonlyargs + node.args.args
    target = add_to_class_target(node)
    explicit = args and re.compile(rf"\bsuper\(\s*{target}\s*,\s*{args[0].arg}\s*\)")
    deco = node.decorator_list[0]
    out = [INDENT + marker]
    for i, line in enumerate(chunk.lines, start=1):
        if i in verbatim:
            out.append(line)
        elif not deco.lineno <= i <= deco.end_lineno:
            line = explicit.sub("super()", line) if explicit else line
            out.append(INDENT + line if line else line)
    return out


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
            classes.pop(node.name, None)
            if not node.decorator_list and node.body[0].lineno != node.lineno:
                classes[node.name] = chunk
        kept.append(chunk)
    return kept


def bound_names(node: ast.stmt) -> list[str]:
    """The names a top-level statement binds in the module (imports aside)."""
    if add_to_class_target(node):
        return []  # d2l's add_to_class returns None: the module-level name is no definition
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    blocks = ("body", "orelse", "finalbody", "handlers")  # if/try/with/for
    children = [c for a in blocks for c in getattr(node, a, []) if isinstance(c, ast.stmt)]
    return [name for child in children for name in bound_names(child)]


def _ruff(text: str, path: Path) -> str:
    """Sort imports and format with ruff, so the module reads like hand-written code."""
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    for args in (["check", "--select", "I", "--fix", "--quiet", "--exit-zero"], ["format"]):
        cmd = [ruff, *args, "--stdin-filename", str(path), "-"]
        out = subprocess.run(cmd, input=text, capture_output=True, text=True, cwd=ROOT)
        if out.returncode:
            raise SystemExit(f"ruff failed on {path.name}:\n{out.stderr}")
        text = out.stdout
    return text


def module_of(notebook: Path) -> Path:
    return ROOT / "d2l_ext" / f"{NAME.match(notebook.name)['topic']}.py"


def generate(notebook: Path) -> str | None:
    """The module text for ``notebook``, or None when it saves nothing."""
    chunks = saved_chunks(notebook)
    if not chunks:
        return None
    rel = notebook.relative_to(ROOT).as_posix()
    cells = json.loads(notebook.read_text())["cells"]
    title = next(
        (c["source"][0].lstrip("# ").strip() for c in cells if c["cell_type"] == "markdown" and c["source"]),
        notebook.stem,
    )
    is_import = [isinstance(c.node, ast.Import | ast.ImportFrom) for c in chunks]
    imports = dict.fromkeys("\n".join(c.lines) for c, i in zip(chunks, is_import) if i)
    definitions = _merge_methods([c for c, i in zip(chunks, is_import) if not i])
    public = [n for c in definitions for n in bound_names(c.node) if not n.startswith("_")]
    blocks = []
    for chunk in definitions:
        lines = [f"# {rel}, cell {chunk.cell}", *chunk.lines]
        for method in chunk.methods:
            lines += ["", *_as_method(method, f"# {rel}, cell {method.cell}")]
        blocks.append("\n".join(lines))
    parts = [
        HEADER.format(nb=rel),
        f'"""{title}\n\nThe definitions saved from {rel}; the comment above each names its cell\n'
        '(counted from 1, markdown cells included).\n"""',
        "\n".join(imports),
        f"__all__ = {list(dict.fromkeys(public))!r}",
        *blocks,
    ]
    return _ruff("\n\n\n".join(p for p in parts if p) + "\n", module_of(notebook))


def is_generated(path: Path) -> bool:
    return path.is_file() and path.read_text().startswith(HEADER.split("{nb}")[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="report differences and exit 1, write nothing")
    check = parser.parse_args(argv).check
    problems, wanted = [], set()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        if not NAME.match(nb.name):
            print(f"skipping {nb.name}: notebooks are named NN_topic.ipynb", file=sys.stderr)
            continue
        text = generate(nb)
        if text is None:
            continue
        module = module_of(nb)
        wanted.add(module)
        name, source = module.relative_to(ROOT).as_posix(), nb.relative_to(ROOT).as_posix()
        old = module.read_text() if module.exists() else ""
        if module.exists() and not is_generated(module):
            rename = f"rename {nb.name} or that module, it will not be overwritten"
            problems.append(f"{name} is hand-written (no generated header); {rename}.")
        elif old != text and check:
            diff = difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), name, f"{name} (from {nb.name})"
            )
            problems.append(f"{name} differs from what {source} generates:\n{''.join(diff)}")
        elif old != text:
            module.write_text(text)
            print(f"wrote {name} from {source}")
    problems += [
        f"{m.relative_to(ROOT)} is generated but no notebook saves into it any more; delete it."
        for m in sorted((ROOT / "d2l_ext").glob("*.py"))
        if is_generated(m) and m not in wanted
    ]
    if problems:
        problems += ["Run `make export` and commit the result."]
        print("notebooks and library are not in sync:", *problems, sep="\n", file=sys.stderr)
        return 1
    if check:
        print(f"{len(wanted)} generated modules match their notebooks.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
