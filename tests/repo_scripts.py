"""The repository's scripts (``tools/*.py``, ``benchmarks/*.py``, ``binder/one_kernel.py``) as
modules, for the tests.

They are programs, not a package, so a test loads one from its file: `script` does it once per
session and registers the module in ``sys.modules`` under its name (a dataclass looks its module
up there), so that every test file that needs a script shares the same module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def script(path: str, name: str | None = None) -> ModuleType:
    """The script at ``path`` (relative to the repository) as a module named ``name`` (default: the
    file's stem; ``tools/site.py`` needs another, since ``site`` is the standard library's)."""
    name = name or Path(path).stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]
