#!/usr/bin/env python3
"""The course website (Jupyter Book 1): ``build`` executes every notebook under the preset in force
(demo when unset) into build/html; ``badge`` writes README.md's Binder badge. site/_config.yml gives
every Binder link; the landing page opens with README.md's, the measured tables come from
benchmarks/results/, and a cell's error or any Sphinx warning fails the build.
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
sys.path.insert(0, str(ROOT))

from d2l_ext.presets import EXPERIMENTS, PRESETS, experiment  # noqa: E402

SITE, README, RESULTS = ROOT / "site", ROOT / "README.md", ROOT / "benchmarks" / "results"
OUT, WORK = ROOT / "build" / "html", ROOT / "build" / "site"
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
        """The Binder launch of ``path`` in JupyterLab, as Jupyter Book's launch button writes it."""
        return f"{self.binderhub}/v2/gh/{self.owner}/{self.name}/{self.branch}?urlpath=lab/tree/{path}"

    def badge(self, path: str) -> str:
        return f"[![Binder]({self.binderhub}/badge_logo.svg)]({self.binder_url(path)})"


def config(site: Path = SITE) -> dict:
    if not (site / "_config.yml").exists():
        raise SiteError(f"{site / '_config.yml'} is missing: the site's settings live there.")
    return yaml.safe_load((site / "_config.yml").read_text())


def repository(site: Path = SITE) -> Repository:
    """The one setting, checked: a GitHub repository, a branch and a BinderHub."""
    cfg = config(site)
    repo, launch = cfg.get("repository") or {}, cfg.get("launch_buttons") or {}
    url, branch = str(repo.get("url", "")).rstrip("/"), str(repo.get("branch", "")).strip()
    binderhub = str(launch.get("binderhub_url", "")).rstrip("/")
    m = re.fullmatch(r"https://github\.com/([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(\.git)?", url)
    checks = {
        f"repository: url: {url!r} is not a GitHub repository; set it to https://github.com/OWNER/NAME, "
        "where the course publishes this bundle.": m,
        f"repository: branch: {branch!r} names no branch; set the branch Binder should build "
        "(HEAD: the repository's default branch).": branch and not re.search(r"\s", branch),
        f"launch_buttons: binderhub_url: {binderhub!r} is not an https URL; set it to "
        "https://mybinder.org (or your own BinderHub).": re.fullmatch(r"https://[^\s/]+(/\S*)?", binderhub),
        "launch_buttons: notebook_interface must be jupyterlab (lab/tree links).": (
            launch.get("notebook_interface") == "jupyterlab"
        ),
        "repository: path_to_book must be empty (the pages sit where they are).": (
            not str(repo.get("path_to_book", "")).strip("/")
        ),
    }
    if wrong := [message for message, ok in checks.items() if not ok]:
        raise SiteError(f"site/_config.yml: {wrong[0]}")
    return Repository(m[1], m[2], branch, binderhub)


def _toc(site: Path) -> list[str]:
    return [c["file"] for c in yaml.safe_load((site / "_toc.yml").read_text()).get("chapters", [])]


def chapters(site: Path = SITE) -> list[str]:
    """The notebooks of site/_toc.yml, in order, as paths from the repository's root."""
    files = [f"{file}.ipynb" for file in _toc(site) if file.startswith("notebooks/")]
    notebooks = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb"))
    if files != notebooks:
        raise SiteError(
            f"site/_toc.yml lists {files}, but notebooks/ holds {notebooks}: list every notebook, "
            "in the order of their numbers."
        )
    return files


def pages(site: Path = SITE) -> list[str]:
    """The file names of site/_toc.yml's pages that are not notebooks (the landing page aside)."""
    return [f"{file}.md" for file in _toc(site) if not file.startswith("notebooks/")]


def readme_opening(readme: str, repo: Repository) -> str:
    """README.md above its first ``##`` heading, its relative links made links into the repository."""
    head = re.split(r"^## ", readme, maxsplit=1, flags=re.M)[0].rstrip() + "\n"

    def absolute(m: re.Match) -> str:
        if re.match(r"[a-z][a-z0-9+.-]*:|#", m[2]):
            return m[0]
        return f"{m[1]}({repo.url}/blob/{repo.branch}/{posixpath.normpath(m[2])})"

    return re.sub(r"(\[[^\]]*\])\(([^)\s]+)\)", absolute, head)


def landing_page(template: str, readme: str, repo: Repository, name: str) -> str:
    """site/intro.md with README.md's opening on its line ``{readme-opening}`` and ``{preset}`` named."""
    line = re.compile(r"^" + re.escape(READ_ME_OPENING) + r"[ \t]*$", re.M)
    if len(line.findall(template)) != 1:
        raise SiteError(
            f"site/intro.md needs one line that reads {READ_ME_OPENING}: README.md's opening goes there."
        )
    return line.sub(lambda _: readme_opening(readme, repo).rstrip("\n"), template).replace("{preset}", name)


def page(text: str, notebooks: list[str]) -> str:
    """A page of site/ with its measured tables made from the committed records (tools/warm.py's
    lecture times, tests/test_lab_e2e.py's Binder walks); a notebook they lack is not measured yet."""
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    stems = [Path(nb).stem for nb in notebooks]
    cold, warm, before = (records["lecture_times_demo"].get(k) for k in ("cold", "warm", "before"))
    times = [
        f"Measured {cold['date'][:10]} on {cold['machine']} ({cold['preset']} preset), each notebook "
        "top to bottom in a fresh kernel:",
        "",
        "| notebook | cold: empty run cache | warm: every run replayed | replays (runs, measurements) |",
        "|---|---:|---:|---:|",
    ]
    for stem in stems:
        c, w = cold["notebooks"].get(f"{stem}.ipynb"), warm["notebooks"].get(f"{stem}.ipynb")
        row = f"{c['seconds']:.0f} s | {w['seconds']:.0f} s | {w['replayed']}" if c and w else ""
        times.append(f"| {stem} | {row or 'not measured yet | |'} |")
    if before:
        took = ", ".join(f"{Path(n).stem} {b['seconds']:.0f} s" for n, b in before["notebooks"].items())
        times += [
            "",
            f"Before instructor mode (commit {before['commit']}), measured the same way: {took} cold.",
        ]
    walks = [
        f"| walk | peak, server and kernels | per notebook (with the server): "
        f"{' / '.join(stem[:2] for stem in stems)} | measured |",
        "|---|---:|---|---|",
    ]
    for r in (records[k] for k in ("binder_walk_ci", "binder_walk_demo") if k in records):
        steps = r["peak_mb_by_step"]
        each = " / ".join(f"{steps[s]:,}" if s in steps else "not measured yet" for s in stems)
        walks.append(
            f"| `{r['preset']}` preset | {r['peak_mb']:,} MB | {each} MB | {r['date']}, {r['machine']} |"
        )
    return text.replace("{binder-walks}", "\n".join(walks)).replace("{lecture-times}", "\n".join(times))


def badge_problems(readme: str, repo: Repository, first: str) -> list[str]:
    """How README.md's Binder badge disagrees with the setting (empty if it agrees)."""
    badges, want = BADGE.findall(readme), repo.badge(first)
    if len(badges) != 1:
        return [f"README.md has {len(badges)} Binder badge lines, not one; it should read:\n{want}"]
    if badges[0].rstrip() != want:
        return [f"README.md's Binder badge is\n{badges[0].rstrip()}\nbut site/_config.yml gives\n{want}"]
    return []


def write_badge() -> int:
    repo, first, readme = repository(), chapters()[0], README.read_text()
    if len(BADGE.findall(readme)) != 1:
        print(*badge_problems(readme, repo, first), file=sys.stderr)
        return 1
    if badge_problems(readme, repo, first):
        README.write_text(BADGE.sub(lambda _: repo.badge(first), readme))
    print(f"README.md's Binder badge launches {first} from site/_config.yml's {repo.url}, {repo.branch}")
    return 0


def cell_timeout(name: str) -> int:
    """Seconds a cell may run before the build calls it hung: ten times every training of the preset
    together, at least ten minutes; none for ``full``, whose expected times are a GPU's."""
    if name == "full":
        return -1
    return max(600, round(10 * sum(experiment(e, name, verbose=False).seconds for e in EXPERIMENTS)))


def stage(src: Path, name: str) -> None:
    """The book's sources in ``src``: site/ with the landing page and tables made, and the notebooks."""
    repo, notebooks, cfg = repository(), chapters(), config()
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    cfg["execute"]["timeout"] = cell_timeout(name)
    (src / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    shutil.copy2(SITE / "_toc.yml", src / "_toc.yml")
    (src / "intro.md").write_text(
        landing_page((SITE / "intro.md").read_text(), README.read_text(), repo, name)
    )
    for nb in notebooks:
        (src / nb).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / nb, src / nb)
    for file in pages():
        (src / file).write_text(page((SITE / file).read_text(), notebooks))


def build(out: Path = OUT, work: Path = WORK) -> Path:
    """Execute the notebooks and write the site to ``out``; returns the landing page."""
    name = os.environ.get("D2L_EXT_PRESET", "").strip().lower() or "demo"  # not full on a GPU
    src, built = work / "src", work / "_build"
    if name not in PRESETS:
        raise SiteError(f"D2L_EXT_PRESET={name!r} is not a preset; use one of {', '.join(PRESETS)}.")
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise SiteError(
            f"{out} is not a site that Sphinx built, and building would replace it: give --out a new folder."
        )
    if (src.exists() or built.exists()) and not (src / "_toc.yml").exists():
        raise SiteError(
            f"{work} holds a src/ or _build/ that this tool did not make: give --work a new folder."
        )
    jb = Path(sys.executable).with_name("jb")
    if not jb.exists():
        raise SiteError(f"{jb} is missing: install the site tools, `pip install -e '.[site]'`.")
    os.environ["D2L_EXT_PRESET"] = name  # the kernels inherit it
    shutil.rmtree(built, ignore_errors=True)  # what an earlier build executed must not count
    stage(src, name)
    print(f"Building the site in the {name} preset (cells may run {cell_timeout(name)} s) ...", flush=True)
    start = time.monotonic()
    run = subprocess.run([jb, "build", src, "--path-output", work, "--all", "-W", "--keep-going"], cwd=ROOT)
    errors = [
        f"{nb.relative_to(built / 'jupyter_execute')}, cell {i}: {o.get('ename')}: {o.get('evalue')}"
        for nb in sorted((built / "jupyter_execute").rglob("*.ipynb"))
        for i, cell in enumerate(json.loads(nb.read_text())["cells"], 1)
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    if run.returncode != 0 or errors:
        reports = "".join(
            f"\n  the cell's traceback: {r}" for r in sorted((built / "html" / "reports").rglob("*.log"))
        )
        raise SiteError(f"the site did not build: {'; '.join(errors or ['see the warnings above'])}{reports}")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built / "html", out)
    print(f"Site in {out}/index.html ({name} preset, {time.monotonic() - start:.0f} s)")
    return out / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute the notebooks, write the site (default: build/html)")
    b.add_argument("--out", type=Path, default=OUT, help="where the site goes (default: build/html)")
    b.add_argument("--work", type=Path, default=WORK, help="the book's sources and Sphinx's files")
    sub.add_parser("badge", help="write README.md's Binder badge from site/_config.yml")
    args = parser.parse_args(argv)
    try:
        if args.command == "badge":
            return write_badge()
        build(args.out.resolve(), args.work.resolve())
    except SiteError as e:
        print(f"site: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
