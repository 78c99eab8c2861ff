#!/usr/bin/env python3
"""The lecture's notebooks as a static website (Jupyter Book 1), and Binder links from one setting.

    python tools/site.py build            # execute every notebook, write the site to build/html
    python tools/site.py badge            # write README.md's Binder badge from site/_config.yml
    python tools/site.py badge --check    # exit 1 if README.md's badge disagrees with it

The one setting is ``repository:`` (``url``: https://github.com/OWNER/NAME, ``branch``) with
``launch_buttons: binderhub_url`` in site/_config.yml. Jupyter Book makes each page's launch button
from it; this tool makes README.md's badge and the landing page's from it, with the same URL.

``build`` lays the book out in build/site/src as the repository is laid out (the pages of site/ at
the top, the notebooks of site/_toc.yml under notebooks/, so that each page's Binder link opens
its notebook's path in the repository), with the landing page made from README.md's opening. Then
``jb build`` executes every notebook in the preset in force (``$D2L_EXT_PRESET``, ``demo`` when
unset) with its widgets' state, and a cell's error, or any Sphinx warning, fails the build; so
does an error output in an executed notebook. The site goes to build/html.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
OUT = ROOT / "build" / "html"
WORK = ROOT / "build" / "site"
DEFAULT_PRESET = "demo"
# README.md's badge: the one line that is a Binder badge image linking to a launch.
BADGE = re.compile(r"^\[!\[Binder\]\([^)]*\)\]\([^)]*\)[ \t]*$", re.M)
READ_ME_OPENING = "{readme-opening}"


class SiteError(Exception):
    """Something the site cannot be built from; the message says what to fix."""


@dataclass(frozen=True)
class Repository:
    """Where the course is published: site/_config.yml's ``repository`` and ``binderhub_url``."""

    owner: str
    name: str
    branch: str
    binderhub: str

    @property
    def url(self) -> str:
        return f"https://github.com/{self.owner}/{self.name}"

    def binder_url(self, path: str) -> str:
        """The Binder launch of the file at ``path`` (from the repository's root) in JupyterLab, as
        Jupyter Book's launch button writes it."""
        return f"{self.binderhub}/v2/gh/{self.owner}/{self.name}/{self.branch}?urlpath=lab/tree/{path}"

    def badge(self, path: str) -> str:
        """A Markdown Binder badge that launches ``path``."""
        return f"[![Binder]({self.binderhub}/badge_logo.svg)]({self.binder_url(path)})"


def config(site: Path = SITE) -> dict:
    path = site / "_config.yml"
    if not path.exists():
        raise SiteError(f"{path} is missing: the site's settings live there.")
    return yaml.safe_load(path.read_text())


def repository(site: Path = SITE) -> Repository:
    """The one setting, checked: a GitHub repository, a branch and a BinderHub."""
    cfg = config(site)
    repo, launch = cfg.get("repository") or {}, cfg.get("launch_buttons") or {}
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch", "")).strip()
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(\.git)?", url)
    if not m:
        raise SiteError(
            f"site/_config.yml: repository: url: {url!r} is not a GitHub repository; "
            "set it to https://github.com/OWNER/NAME, where the course publishes this bundle."
        )
    if not branch or any(c.isspace() for c in branch):
        raise SiteError(
            f"site/_config.yml: repository: branch: {branch!r} names no branch; set the branch "
            "Binder should build (HEAD: the repository's default branch)."
        )
    binderhub = str(launch.get("binderhub_url", "")).rstrip("/")
    if not re.fullmatch(r"https://[^\s/]+(/[^\s]*)?", binderhub):
        raise SiteError(
            f"site/_config.yml: launch_buttons: binderhub_url: {binderhub!r} is not an https URL; "
            "set it to https://mybinder.org (or your own BinderHub)."
        )
    if launch.get("notebook_interface") != "jupyterlab":
        raise SiteError(
            "site/_config.yml: launch_buttons: notebook_interface must be jupyterlab (lab/tree links)."
        )
    if str(repo.get("path_to_book", "")).strip("/"):
        raise SiteError(
            "site/_config.yml: repository: path_to_book must be empty (the pages sit where they are)."
        )
    return Repository(m[1], m[2], branch, binderhub)


def chapters(site: Path = SITE) -> list[str]:
    """The notebooks of site/_toc.yml, in order, as paths from the repository's root."""
    toc = yaml.safe_load((site / "_toc.yml").read_text())
    files = [f"{c['file']}.ipynb" for c in toc.get("chapters", []) if c["file"].startswith("notebooks/")]
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    if files != notebooks:
        raise SiteError(
            f"site/_toc.yml lists {files}, but notebooks/ holds {notebooks}: list every notebook, "
            "in the order of their numbers."
        )
    return files


def readme_opening(readme: str, repo: Repository) -> str:
    """README.md above its first ``##`` heading, its relative links made links into the repository."""
    head = re.split(r"^## ", readme, maxsplit=1, flags=re.M)[0].rstrip() + "\n"

    def absolute(m: re.Match) -> str:
        target = m[2]
        if re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            return m[0]
        return f"{m[1]}({repo.url}/blob/{repo.branch}/{posixpath.normpath(target)})"

    return re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", absolute, head)


def landing_page(template: str, readme: str, repo: Repository, name: str) -> str:
    """site/intro.md with README.md's opening on its line ``{readme-opening}`` and the preset's name
    for ``{preset}``."""
    line = re.compile(r"^" + re.escape(READ_ME_OPENING) + r"[ \t]*$", re.M)
    if len(line.findall(template)) != 1:
        raise SiteError(
            f"site/intro.md needs one line that reads {READ_ME_OPENING}: README.md's opening goes there."
        )
    return line.sub(lambda _: readme_opening(readme, repo).rstrip("\n"), template).replace("{preset}", name)


def pages(site: Path = SITE) -> list[str]:
    """The pages of site/_toc.yml that are not notebooks (the landing page aside), as file names."""
    toc = yaml.safe_load((site / "_toc.yml").read_text())
    return [f"{c['file']}.md" for c in toc.get("chapters", []) if not c["file"].startswith("notebooks/")]


def lecture_times(notebooks: list[str], record: dict) -> str:
    """The table of a lecture-times record (tools/warm.py --record, cold and warm, and the notebooks
    before instructor mode): a notebook it lacks shows as not measured yet."""
    cold, warm, before = record["cold"], record["warm"], record.get("before")
    lines = [
        f"Measured {cold['date'][:10]} on {cold['machine']} ({cold['preset']} preset), each notebook "
        "top to bottom in a fresh kernel:",
        "",
        "| notebook | cold: empty run cache | warm: every run replayed | replays (runs, measurements) |",
        "|---|---:|---:|---:|",
    ]
    for nb in notebooks:
        name, stem = Path(nb).name, Path(nb).stem
        c, w = cold["notebooks"].get(name), warm["notebooks"].get(name)
        if c is None or w is None:
            lines.append(f"| {stem} | not measured yet | | |")
        else:
            lines.append(f"| {stem} | {c['seconds']:.0f} s | {w['seconds']:.0f} s | {w['replayed']} |")
    if before:
        took = ", ".join(f"{Path(n).stem} {b['seconds']:.0f} s" for n, b in before["notebooks"].items())
        lines += [
            "",
            f"Before instructor mode (commit {before['commit']}), measured the same way: {took} cold.",
        ]
    return "\n".join(lines)


def binder_walks(notebooks: list[str], records: list[dict]) -> str:
    """The table of Binder walks (tests/test_lab_e2e.py's records): the peak of the server and its
    kernels, and per notebook; a notebook a walk lacks shows as not measured yet."""
    stems = [Path(nb).stem for nb in notebooks]
    numbers = " / ".join(s[:2] for s in stems)
    lines = [
        f"| walk | peak, server and kernels | per notebook (with the server): {numbers} | measured |",
        "|---|---:|---|---|",
    ]
    for r in records:
        steps = r["peak_mb_by_step"]
        each = " / ".join(f"{steps[s]:,}" if s in steps else "not measured yet" for s in stems)
        lines.append(
            f"| `{r['preset']}` preset | {r['peak_mb']:,} MB | {each} MB | {r['date']}, {r['machine']} |"
        )
    return "\n".join(lines)


def page(text: str, notebooks: list[str]) -> str:
    """A page of site/ with its measured tables made from the committed records."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    walks = [records[k] for k in ("binder_walk_ci", "binder_walk_demo") if k in records]
    text = text.replace("{binder-walks}", binder_walks(notebooks, walks))
    return text.replace("{lecture-times}", lecture_times(notebooks, records["lecture_times_demo"]))


def badge_problems(readme: str, repo: Repository, first: str) -> list[str]:
    """How README.md's Binder badge disagrees with the setting (empty if it agrees)."""
    badges = BADGE.findall(readme)
    want = repo.badge(first)
    if len(badges) != 1:
        return [f"README.md has {len(badges)} Binder badge lines, not one; it should read:\n{want}"]
    if badges[0].rstrip() != want:
        return [f"README.md's Binder badge is\n{badges[0].rstrip()}\nbut site/_config.yml gives\n{want}"]
    return []


def write_badge(check: bool) -> int:
    repo, first = repository(), chapters()[0]
    readme = README.read_text()
    problems = badge_problems(readme, repo, first)
    if not problems:
        print(f"README.md's Binder badge matches site/_config.yml ({repo.url}, {repo.branch})")
        return 0
    if check or len(BADGE.findall(readme)) != 1:
        print("\n".join(problems), file=sys.stderr)
        print("Run `python tools/site.py badge` to write it.", file=sys.stderr)
        return 1
    README.write_text(BADGE.sub(lambda _: repo.badge(first), readme))
    print(f"README.md's Binder badge now launches {repo.binder_url(first)}")
    return 0


def preset() -> str:
    """The preset the site runs: ``$D2L_EXT_PRESET``, or ``demo`` when it is unset."""
    from d2l_ext.presets import PRESETS

    name = os.environ.get("D2L_EXT_PRESET", "").strip().lower() or DEFAULT_PRESET
    if name not in PRESETS:
        raise SiteError(f"D2L_EXT_PRESET={name!r} is not a preset; use one of {', '.join(PRESETS)}.")
    return name


def cell_timeout(name: str) -> int:
    """Seconds a cell may run before the build calls it hung: ten times every training of the preset
    together (no cell runs more), at least ten minutes; none for ``full``, whose expected times are a
    GPU's (on a CPU it takes hours)."""
    if name == "full":
        return -1
    from d2l_ext.presets import EXPERIMENTS, experiment

    total = sum(experiment(e, name, verbose=False).seconds for e in EXPERIMENTS)
    return max(600, round(10 * total))


def stage(src: Path, name: str) -> None:
    """The book's sources in ``src``: site/ with the landing page made, and the notebooks."""
    repo, notebooks = repository(), chapters()
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    cfg = config()
    cfg["execute"]["timeout"] = cell_timeout(name)
    (src / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copy2(SITE / "_toc.yml", src / "_toc.yml")
    (src / "intro.md").write_text(
        landing_page((SITE / "intro.md").read_text(), README.read_text(), repo, name)
    )
    for nb in notebooks:
        (src / nb).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / nb, src / nb)
    for name in pages():
        (src / name).write_text(page((SITE / name).read_text(), notebooks))


def error_outputs(executed: Path) -> list[str]:
    """``notebook, cell N: error`` for each error output of the executed notebooks under ``executed``."""
    found = []
    for nb in sorted(executed.rglob("*.ipynb")):
        for i, cell in enumerate(json.loads(nb.read_text())["cells"], 1):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    found.append(
                        f"{nb.relative_to(executed)}, cell {i}: {out.get('ename')}: {out.get('evalue')}"
                    )
    return found


def build(out: Path = OUT, work: Path = WORK) -> Path:
    """Execute the notebooks and write the site to ``out``; returns the landing page."""
    name = preset()
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise SiteError(
            f"{out} is not a site that Sphinx built, and building would replace it: give --out a new folder."
        )
    os.environ["D2L_EXT_PRESET"] = name  # the kernels inherit it
    src, built_dir = work / "src", work / "_build"
    if (src.exists() or built_dir.exists()) and not (src / "_toc.yml").exists():
        raise SiteError(
            f"{work} holds a src/ or _build/ that this tool did not make: give --work a new folder."
        )
    # A fresh start: executed notebooks or pages left from an earlier build must not count.
    if built_dir.exists():
        shutil.rmtree(built_dir)
    stage(src, name)
    print(f"Building the site in the {name} preset (cells may run {cell_timeout(name)} s) ...", flush=True)
    start = time.monotonic()
    jb = Path(sys.executable).with_name("jb")
    if not jb.exists():
        raise SiteError(f"{jb} is missing: install the site tools, `pip install -e '.[site]'`.")
    cmd = [str(jb), "build", str(src), "--path-output", str(work), "--all", "-W", "--keep-going"]
    run = subprocess.run(cmd, cwd=ROOT)
    built = built_dir / "html"
    errors = error_outputs(built_dir / "jupyter_execute")
    if run.returncode != 0 or errors:
        reports = sorted((built / "reports").rglob("*.log")) if built.exists() else []
        raise SiteError(
            "the site did not build: "
            + "; ".join(errors or ["see the warnings above"])
            + "".join(f"\n  the cell's traceback: {r}" for r in reports)
        )
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built, out)
    print(f"Site in {out}/index.html ({name} preset, {time.monotonic() - start:.0f} s)")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute the notebooks, write the site (default: build/html)")
    b.add_argument("--out", type=Path, default=OUT, help="where the site goes (default: build/html)")
    b.add_argument("--work", type=Path, default=WORK, help="the book's sources and Sphinx's files")
    g = sub.add_parser("badge", help="write README.md's Binder badge from site/_config.yml")
    g.add_argument("--check", action="store_true", help="exit 1 if it disagrees, write nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "badge":
            return write_badge(args.check)
        build(args.out.resolve(), args.work.resolve())
    except SiteError as e:
        print(f"site: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
