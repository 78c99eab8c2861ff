#!/usr/bin/env python3
"""Write the notebooks' ``#@save`` definitions into ``d2l_ext`` (``make export``), or check them.

As in d2l, ``#@save`` (``# @save`` after ruff) on a top-level definition's header saves the
definition, on an import or assignment the statement: ``notebooks/NN_topic.ipynb`` becomes
``d2l_ext/topic.py``, with a generated header (a module without it is never overwritten), ``__all__``
and a comment naming each definition's cell. A function saved with ``@add_to_class(C)``, ``C`` a
class saved earlier, becomes a method at the end of ``C``'s body unless that would change its
meaning: ``C`` decorated or on one line, or a ``__private`` name (a class body mangles those).
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
MARK = re.compile(r"\s*#\s*@save\s*$")
HEADER = (
    "# Generated from {nb} by tools/export.py.\n# Do not edit: change the notebook and run `make export`."
)
NAME = re.compile(r"^\d\d_(?P<topic>[a-z][a-z0-9_]*)\.ipynb$")
PRIVATE = re.compile(r"\b__(?!\w*__\b)\w")  # a name a class body would mangle
INDENT = "    "


class Chunk(NamedTuple):
    """One saved top-level statement: its cell (from 1), its lines without the marks, parsed."""

    cell: int
    lines: list[str]
    node: ast.stmt


def saved_chunks(notebook: Path) -> list[Chunk]:
    """The saved top-level statements of ``notebook``, in notebook order."""
    chunks = []
    for n, cell in enumerate(json.loads(notebook.read_text())["cells"], start=1):
        # IPython magics and shell lines become blank lines, so that line numbers stay.
        lines = ["" if s.lstrip().startswith(("%", "!")) else s for s in "".join(cell["source"]).splitlines()]
        if cell["cell_type"] != "code" or not any(map(MARK.search, lines)):
            continue
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
            if any(map(MARK.search, lines[first - 1 : header_end])):
                header = [MARK.sub("", s) for s in lines[first - 1 : header_end]]
                text = header + lines[header_end : node.end_lineno]
                chunks.append(Chunk(n, text, ast.parse("\n".join(text)).body[0]))
    return chunks


def add_to_class_target(node: ast.stmt) -> str | None:
    """``C`` when ``node`` is a function whose outermost decorator is ``[d2l.]add_to_class(C)``."""
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.decorator_list:
        return None
    m = re.fullmatch(r"(.+\.)?add_to_class\(([A-Za-z_]\w*)\)", ast.unparse(node.decorator_list[0]))
    return m and m[2]


def _as_method(chunk: Chunk, marker: str) -> list[str]:
    """The function of ``chunk`` without its add_to_class decorator, indented as a method, and with
    ``super()`` for the ``super(C, self)`` that the book must write outside the class."""
    node, deco = chunk.node, chunk.node.decorator_list[0]
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
    args = node.args.posonlyargs + node.args.args
    explicit = args and re.compile(rf"\bsuper\(\s*{add_to_class_target(node)}\s*,\s*{args[0].arg}\s*\)")
    out = [INDENT + marker]
    for i, line in enumerate(chunk.lines, start=1):
        if i in verbatim:
            out.append(line)
        elif not deco.lineno <= i <= deco.end_lineno:
            line = explicit.sub("super()", line) if explicit else line
            out.append(INDENT + line if line else line)
    return out


def _blocks(chunks: list[Chunk], rel: str) -> list[str]:
    """Each definition under a comment naming its cell, each add_to_class function moved into its
    class where that keeps its meaning (module doc)."""
    blocks, classes = [], {}  # class name -> index of its block
    for chunk in chunks:
        node, marker = chunk.node, f"# {rel}, cell {chunk.cell}"
        target = add_to_class_target(node)
        if target in classes and not PRIVATE.search("\n".join(chunk.lines)):
            blocks[classes[target]] += "\n\n" + "\n".join(_as_method(chunk, marker))
            continue
        if isinstance(node, ast.ClassDef):
            classes.pop(node.name, None)
            if not node.decorator_list and node.body[0].lineno != node.lineno:
                classes[node.name] = len(blocks)
        blocks.append("\n".join([marker, *chunk.lines]))
    return blocks


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
    imports = [c for c in chunks if isinstance(c.node, ast.Import | ast.ImportFrom)]
    definitions = [c for c in chunks if not isinstance(c.node, ast.Import | ast.ImportFrom)]
    public = [n for c in definitions for n in bound_names(c.node) if not n.startswith("_")]
    parts = [
        HEADER.format(nb=rel),
        f'"""{title}\n\nThe definitions saved from {rel}; the comment above each names its cell\n'
        '(counted from 1, markdown cells included).\n"""',
        "\n".join(dict.fromkeys("\n".join(c.lines) for c in imports)),
        f"__all__ = {list(dict.fromkeys(public))!r}",
        *_blocks(definitions, rel),
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
        if (text := generate(nb)) is None:
            continue
        module = module_of(nb)
        wanted.add(module)
        name, old = module.relative_to(ROOT).as_posix(), module.read_text() if module.exists() else ""
        if module.exists() and not is_generated(module):
            problems.append(
                f"{name} is hand-written (no generated header); rename {nb.name} or that module, "
                "it will not be overwritten."
            )
        elif old != text and check:
            diff = difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), name, f"{name} (from {nb.name})"
            )
            problems.append(f"{name} differs from what notebooks/{nb.name} generates:\n{''.join(diff)}")
        elif old != text:
            module.write_text(text)
            print(f"wrote {name} from notebooks/{nb.name}")
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
