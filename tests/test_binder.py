"""Binder's configuration, checked with the real builder: the Dockerfile that ``jupyter-repo2docker``
(what mybinder.org runs) generates in its no-build mode, which needs no Docker daemon, and the files
it installs from. Each check of the recipe is shown to fail on a copy of the repository with that
piece broken. uv resolves binder/requirements.txt (the lock's share, tools/lock.py) together with
repo2docker's base environment: pip would leave a package of that base broken with only a warning.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_scripts import REPO, script

BIN = Path(sys.executable).parent  # the environment's scripts: repo2docker among them (`make setup`)
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Only guards against a hang: repo2docker writes the recipe in about a second on a 2-core CPU.
RECIPE_TIMEOUT = 120

lock = script("tools/lock.py")
course_site = script("tools/site.py", "course_site")


def recipe(repo: Path) -> str:
    """The Dockerfile that repo2docker generates for ``repo``, as Binder's user ``jovyan``."""
    run = subprocess.run(
        [BIN / "repo2docker", "--no-build", "--user-id", "1000", "--user-name", "jovyan", str(repo)],
        capture_output=True,
        text=True,
        timeout=RECIPE_TIMEOUT,
    )
    assert run.returncode == 0, f"repo2docker failed:\n{run.stderr}"
    assert "FROM " in run.stdout, f"repo2docker printed no Dockerfile:\n{run.stdout}\n{run.stderr}"
    return run.stdout.replace("\\\n", " ")  # one line per Dockerfile instruction


def problems(repo: Path) -> list[str]:
    """What is wrong with ``repo``'s Binder set-up, judged from repo2docker's recipe."""
    dockerfile = recipe(repo)
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN ")]
    found = []

    # The data set from the distribution's package, installed as root before the repository.
    if not any(re.search(r"apt-get install\b.*\sdataset-fashion-mnist\b", run) for run in runs):
        found.append("the recipe does not apt-get install dataset-fashion-mnist (binder/apt.txt)")

    # Python packages: the recipe installs binder/requirements.txt, which must take PyTorch from
    # its CPU-only index.
    if not any(re.search(r'pip install .*-r "?binder/requirements.txt"?', run) for run in runs):
        found.append("the recipe does not pip install binder/requirements.txt")
    reqs = repo / "binder" / "requirements.txt"
    text = reqs.read_text() if reqs.exists() else ""
    index = rf"(?m)^\s*(--index-url|--extra-index-url|-i)[\s=]+{re.escape(CPU_INDEX)}/*(\s|$)"
    if not re.search(index, text):
        found.append(f"binder/requirements.txt does not take torch from the CPU-only index {CPU_INDEX}")
    names = {re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower() for line in text.splitlines()}
    for name in ("torch", "torchvision", "jupyterlab", "ipywidgets"):
        if name not in names:
            found.append(f"binder/requirements.txt does not name {name}")

    # postBuild: d2l without its pins, then this package.
    post = repo / "binder" / "postBuild"
    if not any(run.strip() == "RUN ./binder/postBuild" for run in runs):
        found.append("the recipe does not run binder/postBuild")
    elif not re.search(r"pip install .*--no-deps .*d2l==1\.0\.3", post.read_text()):
        found.append("binder/postBuild does not install d2l==1.0.3 with --no-deps")
    elif not re.search(r"pip install .*(-e \.|\s\.)\s*$", post.read_text(), re.M):
        found.append("binder/postBuild does not install this package")

    # The start command: binder/start wraps every session's command.
    if 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' not in dockerfile:
        found.append("the recipe does not use binder/start as the start command")
    return found


def test_recipe_has_data_cpu_torch_packages_and_start():
    assert problems(REPO) == []
    dockerfile = recipe(REPO)
    # The data set is installed before the repository is copied (a cached layer) ...
    assert dockerfile.index("dataset-fashion-mnist") < dockerfile.index("COPY --chown=1000:1000 src/ ")
    # ... and packages are installed as the user, in the Python of binder/runtime.txt.
    assert re.search(r"environment\S*py\S*3(\.|-2e)11", dockerfile), "not Python 3.11 (runtime.txt)"
    assert "USER ${NB_USER}" in dockerfile
    for name in ("postBuild", "start"):  # the recipe runs them as programs
        path = REPO / "binder" / name
        assert os.access(path, os.X_OK), f"binder/{name} must be executable (chmod +x)"
        assert path.read_text().startswith("#!/bin/bash\n")


@pytest.mark.parametrize(
    "path, edit, expected",
    [
        ("apt.txt", lambda s: s.replace("dataset-fashion-mnist", ""), "dataset-fashion-mnist"),
        ("apt.txt", None, "dataset-fashion-mnist"),
        ("requirements.txt", lambda s: s.replace(CPU_INDEX, "https://pypi.org/simple"), "CPU-only"),
        ("requirements.txt", lambda s: re.sub(r"(?m)^torch\b.*\n", "", s), "does not name torch"),
        ("postBuild", lambda s: s.replace("--no-deps d2l", "d2l"), "--no-deps"),
        ("postBuild", None, "postBuild"),
        ("start", None, "start command"),
    ],
    ids=["apt-emptied", "apt-removed", "cuda-index", "no-torch", "d2l-pins", "no-postBuild", "no-start"],
)
def test_recipe_check_fails_on_a_broken_copy(tmp_path, path, edit, expected):
    skip = shutil.ignore_patterns(".git", ".venv", "build", "__pycache__", "*.egg-info", ".*_cache")
    repo = shutil.copytree(REPO, tmp_path / "repo", ignore=skip)
    target = repo / "binder" / path
    if edit is None:
        target.unlink()
    else:
        target.write_text(edit(target.read_text()))
    found = problems(repo)
    assert any(expected in p for p in found), found


def test_post_build_unpacks_the_data_from_the_package_in_this_package(tmp_path):
    """postBuild's data line, run as it is written (it calls d2l_ext, so an API change breaks it)."""
    (line,) = [
        ln for ln in (REPO / "binder" / "postBuild").read_text().splitlines() if "find_fashion_mnist" in ln
    ]
    env = {**os.environ, "D2L_EXT_CACHE": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    run = subprocess.run(line, shell=True, env=env, capture_output=True, text=True, timeout=RECIPE_TIMEOUT)
    assert run.returncode == 0 and "Fashion-MNIST from" in run.stdout, run.stderr


# Binder's file against Binder's base environment (uv asks the registry for the packages' metadata;
# with every version pinned and the lock's date, a later release cannot change the verdict).


@pytest.mark.parametrize(
    "package, expected",
    [
        (None, r"\A\Z"),
        ("notebook", r"notebook==7\.4\.7 depends on jupyterlab>=4\.4\.9,<4\.5"),
        ("kiwisolver", "kiwisolver is needed but not pinned"),
    ],
    ids=["the-lock-fits", "base-notebook-refuses-the-lab", "a-dependency-unpinned"],
)
def test_binder_base_environment_and_the_lock(package, expected):
    text = re.sub(rf"(?m)^{package}==.*\n", "", lock.BINDER.read_text())
    found = lock.binder_conflicts(text, lock.locked_at())
    assert re.search(expected, found), found


# README.md's badge and the one setting (site/_config.yml's ``repository`` and ``binderhub_url``).


def site_copy(tmp_path: Path, **repository) -> Path:
    """site/ copied, with ``repository:`` settings replaced."""
    site = Path(shutil.copytree(REPO / "site", tmp_path / "site"))
    cfg = course_site.config(site)
    cfg["repository"].update(repository)
    (site / "_config.yml").write_text(yaml.safe_dump(cfg))
    return site


def test_readme_badge_follows_the_setting(tmp_path):
    readme, first = (REPO / "README.md").read_text(), course_site.chapters()[0]
    assert first == "notebooks/00_fashion_mnist.ipynb"  # the badge opens the lecture's first notebook
    assert course_site.badge_problems(readme, course_site.repository(), first) == []
    site = site_copy(tmp_path, url="https://github.com/a-course/modern-cnns", branch="2027")
    repo = course_site.repository(site)
    assert repo.badge(first) == (
        "[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/v2/gh/a-course/modern-cnns/2027"
        "?urlpath=lab/tree/notebooks/00_fashion_mnist.ipynb)"
    )
    # The committed README disagrees with this setting, and says what it should read; writing the
    # badge makes them agree and changes nothing else.
    found = course_site.badge_problems(readme, repo, first)
    assert len(found) == 1 and "a-course/modern-cnns/2027" in found[0]
    fixed = course_site.BADGE.sub(lambda _: repo.badge(first), readme)
    assert course_site.badge_problems(fixed, repo, first) == []
    assert fixed.splitlines()[3:] == readme.splitlines()[3:]
    assert course_site.badge_problems(readme.replace(course_site.BADGE.search(readme)[0], ""), repo, first)


@pytest.mark.parametrize(
    "setting, expected",
    [
        ({"url": "https://gitlab.com/a/b"}, "not a GitHub repository"),
        ({"url": "OWNER/REPO"}, "https://github.com/OWNER/NAME"),
        ({"branch": ""}, "names no branch"),
        ({"path_to_book": "site"}, "path_to_book must be empty"),
    ],
    ids=["gitlab", "no-url", "no-branch", "path-to-book"],
)
def test_a_bad_setting_says_what_to_set(tmp_path, setting, expected):
    with pytest.raises(course_site.SiteError, match=re.escape(expected)):
        course_site.repository(site_copy(tmp_path, **setting))
