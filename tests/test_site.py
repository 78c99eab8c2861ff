"""The course website (`tools/site.py build`, `make html`), built once in the ci preset (executing
every notebook: the build's cost) and read in Debian's headless Chromium (the ``browser`` fixture of
tests/test_lab_e2e.py) from a loopback HTTP server; the browser reaches nothing else (the CDNs of
MathJax and the widget manager are cut off), so nothing here depends on the network.
"""

from __future__ import annotations

import functools
import html.parser
import json
import os
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nbformat
import pytest
from playwright.sync_api import Browser, Page
from repo_scripts import REPO, script
from test_lab_e2e import TRACEBACK, WIDGET_REPR, browser  # noqa: F401 (a fixture)

course_site = script("tools/site.py", "course_site")

# Timeouts (seconds) only guard against a hang: the ci build took 399 to 593 s (210 s of CPU) on a
# 2-core CPU loaded with other work (load 6 to 10); a page loads in about a second.
BUILD_TIMEOUT, PAGE_TIMEOUT, HTTP_TIMEOUT = 6000, 60, 30
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """The site, built by `tools/site.py build` in the ci preset into a temporary folder."""
    tmp = tmp_path_factory.mktemp("site")
    run = subprocess.run(
        [sys.executable, REPO / "tools" / "site.py", "build", "--out", tmp / "html", "--work", tmp / "work"],
        env={**os.environ, "D2L_EXT_PRESET": "ci"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert run.returncode == 0, f"the site did not build:\n{run.stdout[-6000:]}\n{run.stderr[-6000:]}"
    return tmp / "html"


@pytest.fixture(scope="module")
def site(built) -> Iterator[str]:
    """The base URL of a loopback HTTP server on the built site."""
    server = ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=built)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def page(browser: Browser, site: str) -> Iterator[Page]:  # noqa: F811 (the imported fixture)
    context = browser.new_context()
    context.route(re.compile(r"^(?!" + re.escape(site) + ")"), lambda route: route.abort())  # only the site
    p = context.new_page()
    p.set_default_timeout(PAGE_TIMEOUT * 1000)
    yield p
    context.close()


REPOSITORY = course_site.repository()
NOTEBOOKS = course_site.chapters()  # notebooks/NN_topic.ipynb, in lecture order
PAGES = ["index.html", "intro.html", *[nb.replace(".ipynb", ".html") for nb in NOTEBOOKS]]
PAGES += [name.replace(".md", ".html") for name in course_site.pages()]  # teaching, speed, development


def visit(page: Page, url: str) -> None:
    response = page.goto(url, wait_until="load")
    assert response is not None and response.status == 200, f"{url}: {response and response.status}"
    if url.endswith("/index.html"):  # Jupyter Book's redirect to the landing page
        page.wait_for_url("**/intro.html", wait_until="load")


def each(page: Page, selector: str, expression: str) -> list:
    """The JavaScript ``expression`` of each element ``e`` that ``selector`` finds in the page."""
    return page.eval_on_selector_all(selector, f"els => els.map(e => {expression})")


# Cheap checks of the tool itself (no build).


def test_landing_page_has_readme_opening_once():
    readme = (
        "# T\n\n[![Binder](b.svg)](https://x)\n\nSee [the data](d2l_ext/data.py), [x](#a).\n\n## Next\nno\n"
    )
    opening = course_site.readme_opening(readme, REPOSITORY)
    assert "## Next" not in opening and "no" not in opening.split()  # it stops at the first section
    assert f"[the data]({REPOSITORY.url}/blob/{REPOSITORY.branch}/d2l_ext/data.py)" in opening
    assert "[x](#a)" in opening and "(https://x)" in opening
    readme = "# T\n\nFirst paragraph.\n\n## Next\n"
    template = "% a comment about {readme-opening}\n{readme-opening}\n\nUnder the {preset} preset.\n"
    page = course_site.landing_page(template, readme, REPOSITORY, "ci")
    assert page == "% a comment about {readme-opening}\n# T\n\nFirst paragraph.\n\nUnder the ci preset.\n"
    with pytest.raises(course_site.SiteError, match="one line that reads"):
        course_site.landing_page("no place for it\n", readme, REPOSITORY, "ci")


def test_cell_timeout_guards_a_hang_only():
    assert course_site.cell_timeout("ci") >= 600
    assert course_site.cell_timeout("demo") > course_site.cell_timeout("ci")
    assert course_site.cell_timeout("full") == -1  # the book's settings may take hours on a CPU


def test_a_toc_missing_a_notebook_is_refused(tmp_path):
    toc = (REPO / "site" / "_toc.yml").read_text()
    (tmp_path / "_toc.yml").write_text(re.sub(r"(?m)^  - file: notebooks/02_resnet\n", "", toc))
    with pytest.raises(course_site.SiteError, match=r"02_resnet.*list every notebook"):
        course_site.chapters(tmp_path)


def test_build_replaces_only_what_it_made(tmp_path, monkeypatch):
    monkeypatch.setenv("D2L_EXT_PRESET", "ci")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(course_site.SiteError, match="give --out a new folder"):
        course_site.build(tmp_path / "out", tmp_path / "work")
    (tmp_path / "work" / "src").mkdir(parents=True)
    with pytest.raises(course_site.SiteError, match="give --work a new folder"):
        course_site.build(tmp_path / "new", tmp_path / "work")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    monkeypatch.setenv("D2L_EXT_PRESET", "fast")
    with pytest.raises(course_site.SiteError, match="not a preset; use one of ci, demo, full"):
        course_site.build(tmp_path / "new", tmp_path / "other")


# The built site, in the browser.


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_with_its_images_and_no_traceback(site, page, path):
    visit(page, site + path)
    images = each(page, "img", "[e.src, e.complete, e.naturalWidth]")
    # The one image from elsewhere is README's Binder badge (on the landing page); the browser
    # reaches nothing but the site, so it is not asked to load.
    outside = {src for src, _, _ in images if not src.startswith(site)}
    assert outside <= {REPOSITORY.binderhub + "/badge_logo.svg"}, outside
    broken = [src for src, complete, width in images if src.startswith(site) and not (complete and width > 0)]
    assert not broken, f"{path}: images that did not load: {broken}"
    outputs = "\n".join(each(page, ".cell_output", "e.textContent"))
    assert not TRACEBACK.search(outputs), f"{path}: a traceback in the page"
    assert page.locator(".cell_output .traceback, .output.traceback").count() == 0, path
    assert not WIDGET_REPR.search(outputs), f"{path}: a widget shown as its text repr"


class Links(html.parser.HTMLParser):
    """The link targets (href, src) and the ids of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: set[str] = set()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        meta = dict(attrs)
        if tag == "meta" and str(meta.get("http-equiv", "")).lower() == "refresh":  # index.html's redirect
            self.targets.add(re.sub(r"(?i)^\s*\d+\s*;\s*url=", "", meta.get("content", "")))
        for key, value in attrs:
            if key in ("href", "src") and value and not value.startswith(("data:", "javascript:", "mailto:")):
                self.targets.add(value)
            elif key in ("id", "name") and value:
                self.ids.add(value)


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_every_link_within_the_site_resolves(site):
    """Every page reachable from the landing page, and every href, src and anchor in it that stays
    within the site, followed over HTTP."""
    status: dict[str, int] = {}
    pages: dict[str, Links] = {}
    todo = [site + "index.html"]
    while todo:
        url = todo.pop()
        if url in status:
            continue
        status[url], body = fetch(url)
        if status[url] == 200 and (url.endswith(".html") or url.endswith("/")):
            pages[url] = Links()
            pages[url].feed(body.decode())
            for target in pages[url].targets:
                absolute = urllib.parse.urljoin(url, target).split("#")[0]
                if absolute.startswith(site):
                    todo.append(absolute)
    bad = [f"{url}: HTTP {code}" for url, code in status.items() if code != 200]
    for url, links in pages.items():
        for target in links.targets:
            base, _, anchor = urllib.parse.urljoin(url, target).partition("#")
            if base.startswith(site) and anchor and base in pages and anchor not in pages[base].ids:
                bad.append(f"{url}: {target} (no such anchor)")
    assert not bad, "links within the site that do not resolve:\n" + "\n".join(sorted(bad))
    # The crawl reached every page of the lecture, and the files they show and link.
    assert {site + p for p in PAGES} <= pages.keys()
    assert len(status) > len(pages) > len(PAGES)


@pytest.mark.parametrize("nb", NOTEBOOKS)
def test_notebook_page(built, site, page, nb):
    """It launches the notebook on Binder from the setting, links its file, shows every figure,
    collapses the cells tagged ``hide-input`` and stores each widget with its state."""
    visit(page, site + nb.replace(".ipynb", ".html"))
    hrefs = each(page, "a[href]", "e.href")
    binder = [h for h in hrefs if h.startswith(REPOSITORY.binderhub + "/v2/")]
    assert binder == [REPOSITORY.binder_url(nb)], binder
    assert REPOSITORY.url in hrefs or REPOSITORY.url + "/" in hrefs  # the repository button
    # The download button gives the notebook file: the repository's notebook, cell for cell.
    files = {h for h in hrefs if h.startswith(site) and h.endswith(".ipynb")}
    assert len(files) == 1, files
    status, body = fetch(files.pop())
    assert status == 200
    cells = nbformat.read(REPO / nb, as_version=4).cells
    assert [c.source for c in nbformat.reads(body.decode(), as_version=4).cells] == [c.source for c in cells]

    # The build's outputs: every figure the notebook drew is an image of the page (widgets' plots
    # live in their state).
    ran = nbformat.read(built.parent / "work" / "_build" / "jupyter_execute" / nb, as_version=4)
    outputs = [o.get("data", {}) for c in ran.cells for o in c.get("outputs", [])]
    figures = sum(bool({"image/png", "image/svg+xml"} & set(data)) for data in outputs)
    images = [src for src in each(page, "img", "e.src") if src.startswith(site)]
    assert len(images) >= figures, (len(images), figures)

    tagged = sum(c.cell_type == "code" and "hide-input" in c.metadata.get("tags", []) for c in cells)
    collapsed = page.locator("details.hide.above-input")
    assert collapsed.count() == tagged, (collapsed.count(), tagged)
    for i in range(tagged):
        assert collapsed.nth(i).get_attribute("open") is None
        assert not collapsed.nth(i).locator(".cell_input").is_visible()

    # A page shows a widget from its stored state (the widget manager, from a CDN, renders it), so
    # each widget must be there: its view, the models it refers to, its sliders and what its Output
    # showed when the notebook ran (a plot, a table).
    expected = [data[WIDGET_VIEW]["model_id"] for data in outputs if WIDGET_VIEW in data]
    if any("ipywidgets" in c.source for c in cells):  # notebook 03's cost explorer
        assert expected, "the notebook displayed no widget"
    views = each(page, f'script[type="{WIDGET_VIEW}"]', "e.textContent")
    assert [json.loads(v)["model_id"] for v in views] == expected
    if not expected:
        return
    (state,) = each(page, f'script[type="{WIDGET_STATE}"]', "e.textContent")
    models = json.loads(state)["state"]
    for model_id in expected:
        tree = descendants(models, model_id)
        names = [models[m]["model_name"] for m in tree]
        assert any(n.endswith("SliderModel") for n in names), names
        shown = [
            models[m]["state"].get("outputs", []) for m in tree if models[m]["model_name"] == "OutputModel"
        ]
        assert shown and all(shown), f"a widget without the output it showed: {names}"


def descendants(models: dict, model_id: str) -> list[str]:
    """``model_id`` and every model its state refers to (``IPY_MODEL_<id>``), the layouts aside."""
    found, todo = [], [model_id]
    while todo:
        m = todo.pop()
        if m in found:
            continue
        assert m in models, f"the widget state lacks model {m}"
        found.append(m)
        todo += re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(models[m]["state"]))
    return [m for m in found if models[m]["model_name"] != "LayoutModel"]


def test_landing_page_is_readme_opening_with_the_lecture_in_order(site, page):
    visit(page, site + "intro.html")
    readme = (REPO / "README.md").read_text()
    first = re.split(r"\n\n", readme.split("\n## ")[0])[2]  # the paragraph under the badge

    def words(text: str) -> str:  # as the page shows them: links as their text, smart quotes plain
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)|[*`]", r"\1", text)
        return " ".join(text.translate(str.maketrans("\u201c\u201d\u2018\u2019", "\"\"''")).split())

    text = words(page.inner_text("main"))
    assert words(first) in text
    hrefs = each(page, "main a[href]", "e.href")
    binder = [h for h in hrefs if h.startswith(REPOSITORY.binderhub + "/v2/")]
    assert binder == [REPOSITORY.binder_url(NOTEBOOKS[0])]  # README's badge, from the setting
    lecture = [h.removeprefix(site).split("#")[0] for h in hrefs if h.startswith(site + "notebooks/")]
    assert list(dict.fromkeys(lecture)) == [nb.replace(".ipynb", ".html") for nb in NOTEBOOKS]
    assert "executed under the ci run preset" in text  # the preset the build ran


def test_equations_are_left_to_mathjax(site, page):
    visit(page, site + "notebooks/01_batch_norm.html")
    assert page.locator("script[src*='mathjax']").count() == 1
    # MathJax typesets what the page keeps between \( \) and \[ \]: the lecture's BN formula among it.
    math = each(page, ".math", "e.textContent")
    assert any(re.search(r"\\gamma", m) for m in math), math[:5]
    assert all(re.search(r"\\[(\[]", m) for m in math), math[:5]
