#!/usr/bin/env python3
"""The lock: the exact versions `make setup` installs and Binder's image holds, resolved by uv.

``make lock`` writes requirements.txt (pyproject.toml with its extras and requirements.in, for every
platform and Python 3.11+, as of the date in its header) and binder/requirements.txt, its share for
Binder (torch from PyTorch's CPU index). ``--sync`` (make setup) makes this environment the lock.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.txt"
BINDER = ROOT / "binder" / "requirements.txt"
UV = Path(sys.executable).with_name("uv")
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# What PyTorch's CUDA build from PyPI requires on Linux and its CPU build does not.
CUDA_ONLY = re.compile(r"^(nvidia-.+|cuda-.+|triton)$")
# Installed beside the lock, both with --no-deps: the book's package (its exact pins break Python
# 3.12) and this one. A venv's own installer is the lock's only where a locked package needs it.
NOT_LOCKED = {"d2l", "d2l-ext"}
SEED = {"pip", "setuptools", "wheel"}
# Binder: Linux on x86_64 (glibc 2.28 or newer), the Python of binder/runtime.txt.
BINDER_TARGET = (
    "--python-platform x86_64-manylinux_2_28 --no-python-downloads --no-header --no-annotate".split()
)
BINDER_HEADER = f"""\
# Binder's share of requirements.txt, written with it by `make lock`; do not edit. repo2docker
# installs this with pip into Binder's Python environment, then binder/postBuild adds d2l (without
# its pins) and this package.
#
# pyproject.toml's dependencies and lab extra with what they need, at the versions of
# requirements.txt, for Linux and Python {{python}} (binder/runtime.txt's, as repo2docker's base
# environment holds it). PyTorch's CPU index serves `torch==X+cpu` (about 200 MB), which
# `torch==X` matches and pip prefers over PyPI's CUDA build (several GB, useless on Binder); the
# CUDA-only packages that build requires are left out.
--extra-index-url {CPU_INDEX}
"""
# conda-forge names of the base environment's Python packages whose PyPI name differs.
PYPI_NAMES = {
    "brotli-python": "brotli",
    "jupyterhub-base": "jupyterhub",
    "nbconvert-core": "nbconvert",
    "python-fastjsonschema": "fastjsonschema",
}


class LockError(Exception):
    """The lock cannot be written or the environment differs from it; the message says what to do."""


def binder_base() -> dict[str, str]:
    """``name -> version`` of ``python`` and the Python packages (PyPI names) that Binder's image
    holds before our file: repo2docker's base environment for binder/runtime.txt's Python."""
    runtime = ROOT / "binder" / "runtime.txt"
    m = re.fullmatch(r"python-(\d+\.\d+)", runtime.read_text().strip())
    if not m:
        raise LockError(f"{runtime} should read python-X.Y (e.g. python-3.11), not {runtime.read_text()!r}.")
    if (spec := importlib.util.find_spec("repo2docker")) is None:
        raise LockError("repo2docker is not installed: run `make setup` (it comes with the test tools).")
    conda = Path(spec.origin).parent / "buildpacks" / "conda" / f"environment.py-{m[1]}-linux-64.lock"
    if not conda.exists():
        raise LockError(f"repo2docker has no base environment for Python {m[1]} ({conda}).")
    found = {}
    for line in conda.read_text().splitlines():
        if line.startswith("https://"):
            file = line.split("#")[0].rsplit("/", 1)[1].removesuffix(".conda").removesuffix(".tar.bz2")
            name, version, build = file.rsplit("-", 2)
            # Python packages are built as noarch (pyh..., py_...) or for one Python (py311...).
            if name == "python" or re.match(r"py(h|_|\d)", build):
                found[canonicalize_name(PYPI_NAMES.get(name, name))] = version
    return found


def pins(text: str, environment: dict[str, str] | None = None) -> dict[str, str]:
    """``name -> version`` of a requirements text's lines whose markers hold in ``environment``
    (default: this interpreter); a line that is not an exact pin is an error."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        spec = list(req.specifier)
        if len(spec) != 1 or spec[0].operator != "==" or req.url:
            raise LockError(f"line {number}: {line!r} is not an exact pin (name==version); run `make lock`.")
        if req.marker is None or req.marker.evaluate(environment):
            found[canonicalize_name(req.name)] = spec[0].version
    return found


def installed() -> dict[str, str]:
    """``name -> version`` of every distribution this interpreter sees, but d2l and this package."""
    found = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    return {name: version for name, version in found.items() if name not in NOT_LOCKED}


def drift(locked: dict[str, str], have: dict[str, str]) -> list[str]:
    """How an environment's packages ``have`` differ from the ``locked`` ones."""
    found = []
    for name in sorted(locked.keys() | have.keys()):
        want, got = locked.get(name), have.get(name)
        if got is None:
            found.append(f"{name}=={want} is locked but not installed")
        elif want is None and name not in SEED:
            found.append(f"{name}=={got} is installed but not locked")
        elif want is not None and got != want:
            found.append(f"{name} is locked at {want} but {got} is installed")
    return found


def uv(*args: str) -> str:
    """The output of uv's ``pip compile`` with ``args``, run in the repository, or a LockError."""
    if not UV.exists():
        raise LockError(f"{UV} is missing: run `make setup` (uv comes with the test tools).")
    run = subprocess.run([UV, "pip", "compile", *args], cwd=ROOT, capture_output=True, text=True)
    if run.returncode:
        raise LockError(f"uv pip compile {' '.join(args)} failed:\n{run.stderr}")
    return run.stdout


def binder_conflicts(binder: str, newer: str) -> str:
    """Why Binder's image would be broken once pip installs the requirements text ``binder`` over its
    base environment (pip keeps the rest of the base, warning at most), or ""; ``newer``: the lock's date."""
    base = binder_base()
    pinned = pins(binder)  # no markers: it is resolved for Binder's platform alone
    kept = {name: version for name, version in base.items() if name not in pinned and name != "python"}
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as together:
        # Versions only: the CPU index is not needed (nor always reachable) to compare them.
        together.write("".join(f"{name}=={version}\n" for name, version in (pinned | kept).items()))
        together.flush()
        try:
            target = ["--python-version", base["python"], *BINDER_TARGET, "--exclude-newer", newer]
            resolved = uv(together.name, *target)
        except LockError as e:
            return str(e).split("\n", 1)[1]
    # What pip would add unpinned: a package that Binder needs and the file does not name.
    unpinned = sorted(pins(resolved).keys() - pinned.keys() - kept.keys())
    return "".join(f"{name} is needed but not pinned\n" for name in unpinned if not CUDA_ONLY.match(name))


def locked_at() -> str:
    """The lock's date: no release uploaded after it was considered (uv's ``--exclude-newer``)."""
    m = re.search(r"--exclude-newer (\S+)", LOCK.read_text())
    if not m:
        raise LockError(f"{LOCK.name} names no --exclude-newer date: it was not written by `make lock`.")
    return m[1]


def lock(now: datetime) -> None:
    """Write both files from the newest releases before ``now`` that our inputs and Binder's base allow."""
    newer = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    extras = ["--extra", "lab", "--extra", "test", "--extra", "site"]
    here = ["--universal", "--python-version", "3.11", "--upgrade", "--exclude-newer", newer, "-o", LOCK.name]
    uv("pyproject.toml", "requirements.in", *extras, *here)
    python = binder_base()["python"]
    binder = ["-c", LOCK.name, "--python-version", python, *BINDER_TARGET, "--exclude-newer", newer]
    resolved = uv("pyproject.toml", "--extra", "lab", *binder)
    kept = [line for line in resolved.splitlines() if not CUDA_ONLY.match(line.split("==")[0])]
    text = BINDER_HEADER.format(python=python) + "\n".join(kept) + "\n"
    if why := binder_conflicts(text, newer):
        raise LockError(
            "Binder's base environment conflicts with the lock; pin the package it names in "
            f"pyproject.toml's lab extra, at a version that accepts ours:\n{why}"
        )
    BINDER.write_text(text)
    print(
        f"wrote {LOCK.name} ({len(pins(LOCK.read_text()))} pins here) and binder/requirements.txt "
        f"({len(kept)} pins), releases before {newer}"
    )


def sync() -> None:
    """Remove what the lock does not name (left by an older lock), then check that this is the lock."""
    locked = pins(LOCK.read_text())
    extra = sorted(set(installed()) - locked.keys() - SEED)
    if extra:
        print("[setup] removing what the lock does not name:", " ".join(extra))
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "--quiet", "-y", *extra], check=True)
    if found := drift(locked, installed()):
        raise LockError(f"{sys.prefix} differs from {LOCK.name}:\n  " + "\n  ".join(found))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sync", action="store_true", help="make this environment the lock (make setup)")
    args = parser.parse_args(argv)
    try:
        sync() if args.sync else lock(datetime.now(UTC))
    except LockError as e:
        print(f"lock: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
