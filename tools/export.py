#!/usr/bin/env python3
"""Export the notebooks' ``#@save`` definitions into ``d2l_ext``, or check that they are in sync.

d2l's convention: a trailing ``#@save`` on a top-level ``class`` or ``def`` line, or on one of its
decorators' lines, saves that whole definition with its decorators (so ``@d2l.add_to_class(C)``
methods come along); on a top-level import or assignment it saves that statement (``ruff format``
writes the mark as ``# @save``; both count). ``notebooks/NN_topic.ipynb`` becomes
``d2l_ext/topic.py`` with a header saying so. A module without that header is hand-written and is
never overwritten.

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


def _code(cell_source: str) -> str:
    """Cell source as Python: IPython magics and shell lines become blank lines (line numbers kept)."""
    return "\n".join(
        "" if line.lstrip().startswith(("%", "!")) else line for line in cell_source.splitlines()
    )


def saved_chunks(notebook: Path) -> tuple[list[str], list[str]]:
    """The saved imports and the other saved statements of ``notebook``, in notebook order."""
    imports, chunks = [], []
    cells = json.loads(notebook.read_text())["cells"]
    for n, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        if not any(MARK_RE.search(line) for line in src.splitlines()):
            continue
        lines = _code(src).splitlines()
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError as e:
            raise SystemExit(f"{notebook.name}, code cell {n}: cannot parse ({e}).") from None
        for node in tree.body:
            # The mark sits on the def/class line, or, as in the book, on a decorator's line:
            # `@d2l.add_to_class(ResNet)  #@save`.
            first = min([d.lineno for d in getattr(node, "decorator_list", [])] + [node.lineno])
            marked = [i for i in range(first, node.lineno + 1) if MARK_RE.search(lines[i - 1])]
            if not marked:
                continue
            text = lines[first - 1 : node.end_lineno]
            for i in marked:
                text[i - first] = MARK_RE.sub("", lines[i - 1]).rstrip()
            chunk = "\n".join(text).rstrip()
            (imports if isinstance(node, ast.Import | ast.ImportFrom) else chunks).append(chunk)
    return imports, chunks


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
    imports, chunks = saved_chunks(notebook)
    if not chunks and not imports:
        return None
    rel = notebook.relative_to(ROOT).as_posix()
    cells = json.loads(notebook.read_text())["cells"]
    title = next(
        (c["source"][0].lstrip("# ").strip() for c in cells if c["cell_type"] == "markdown" and c["source"]),
        notebook.stem,
    )
    parts = [
        HEADER.format(nb=rel),
        f'"""{title}\n\nThe definitions saved from {rel}.\n"""',
        "\n".join(dict.fromkeys(imports)),
        *chunks,
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
