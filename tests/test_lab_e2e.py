"""The notebooks in a real JupyterLab, driven through Debian's Chromium like a student would.

One JupyterLab server, started the way ``make lab`` starts it (the venv's ``jupyter lab
notebooks/``, here on loopback with a token and a free port, and the ``ci`` preset), and one
headless Chromium (via Playwright). For every notebook: open it, Run > Run All Cells, wait until
every code cell has an execution count and the kernel is idle, then check that no cell failed,
that ipywidgets rendered as live widgets (a slider that moves and updates its output, not a text
repr) and that plots rendered as images. A screenshot per notebook goes to ``build/e2e/``.
The server and its kernels are stopped whatever happens, and the notebooks on disk are left as
they were (autosave is off).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
SHOTS = REPO / "build" / "e2e"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def timeout_scale() -> float:
    """``$E2E_TIMEOUT_SCALE``: a factor for every timeout below (default 1), for very slow machines."""
    value = os.environ.get("E2E_TIMEOUT_SCALE", "1")
    try:
        scale = float(value)
    except ValueError:
        scale = 0.0
    if not scale > 0:
        raise ValueError(f"E2E_TIMEOUT_SCALE={value!r}: give a positive factor for every timeout, e.g. 3.")
    return scale


# Timeouts (seconds) only guard against a hang; none is a verdict on speed. Each is ten times or
# more what its step took on a 2-core CPU busy with other work (the test writes what every step
# took to build/e2e/durations.json), so a machine ten times slower gets the same verdict as a
# fast one; E2E_TIMEOUT_SCALE multiplies them all for a slower machine still.
# SERVER_START: jupyter lab answers; PAGE_LOAD: the page and its kernel are ready; RUN_ALL: a whole
# notebook in the ci preset; WIDGET_ROUND_TRIP: a slider's callback redraws; UI: a click, a key,
# a screenshot; API: one REST call to the server (a kernel's shutdown waits for the kernel).
SCALE = timeout_scale()
SERVER_START, PAGE_LOAD, RUN_ALL, WIDGET_ROUND_TRIP, UI, API = (
    SCALE * t for t in (150, 180, 1200, 120, 120, 120)
)
# What each step took, per notebook (for reviewing the margins above; nothing asserts on it).
DURATIONS: dict[str, dict[str, float]] = {}

# JupyterLab settings for the test's own settings folder: keep every cell in the page (no
# windowing), never write the notebooks back (no autosave), no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"checkForUpdates": False, "fetchNews": "false"},
}
# What a traceback looks like once JupyterLab renders it (errors and stderr share one renderer).
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*Cell In\s*\[\d+\], line \d+", re.M)
# The text repr a widget shows when the page cannot render it.
WIDGET_REPR = re.compile(
    r"\b(interactive|\w*Slider|[HV]Box|Dropdown|Output)\((children|value|options|layout)="
)


@dataclass
class Lab:
    url: str
    token: str
    process: subprocess.Popen

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method)
        req.add_header("Authorization", f"token {self.token}")
        with urllib.request.urlopen(req, timeout=API) as r:
            body = r.read()
        return json.loads(body) if body else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group, then any kernel it left (kernels get their own session)."""
    try:
        kernels = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kernels = []
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    for k in kernels:
        try:
            k.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(kernels, timeout=10)


@contextlib.contextmanager
def start_lab(home: Path, notebooks: str = "notebooks/") -> Iterator[Lab]:
    """JupyterLab as `make lab` starts it, on loopback with a token; its files go under ``home``."""
    settings = home / "settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")  # the venv's, as `make lab` uses
    cmd = [
        str(jupyter), "lab", notebooks,  # the command of `make lab`, then:
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={token}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={home / 'workspaces'}",
        "--LabApp.extension_manager=readonly",  # no PyPI look-ups from the page
        f"--FileCheckpoints.checkpoint_dir={home / 'checkpoints'}",  # not next to the notebooks
    ]  # fmt: skip
    if os.geteuid() == 0:  # CI containers run as root, which jupyter refuses without this
        cmd.append("--allow-root")
    # The user's Jupyter config and runtime files stay out of it; kernels run the ci preset.
    env = dict(
        os.environ,
        D2L_EXT_PRESET="ci",
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
    )
    log = (home / "server.log").open("w")
    process = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Lab(f"http://127.0.0.1:{port}", token, process)
    try:
        start = time.monotonic()
        deadline = start + SERVER_START
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited:\n{(home / 'server.log').read_text()}")
            try:
                server.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"jupyter lab not up in {SERVER_START:.0f} s (a hang? on a slow machine, "
                        "raise E2E_TIMEOUT_SCALE)"
                    ) from None
                time.sleep(0.5)
        DURATIONS.setdefault("server", {})["start"] = time.monotonic() - start
        yield server
    finally:
        stop(process)
        log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    with start_lab(tmp_path_factory.mktemp("lab")) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise FileNotFoundError(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (as root), "
            "or set E2E_CHROMIUM to a Chromium binary."
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def code_sources(notebook: Path) -> list[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


# Collected from the page in one go after the run.
PAGE_STATE = r"""() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  const all = (sel) => [...nb.querySelectorAll(sel)];
  const out = (mime) => all(`.jp-OutputArea-output[data-mime-type="${mime}"]`).map(e => e.innerText);
  return {
    prompts: all('.jp-CodeCell .jp-InputArea .jp-InputPrompt').map(e => e.innerText.trim()),
    stderr: out('application/vnd.jupyter.stderr'),
    text: out('text/plain'),
    images: all('.jp-OutputArea-output img').map(i => [i.naturalWidth, i.naturalHeight]),
    widgets: all('.jp-OutputArea-output > .jupyter-widgets').map(e => e.innerText.slice(0, 300)),
    widget_errors: all('.jp-OutputArea-output').map(e => e.innerText)
      .filter(t => /Error displaying widget|Loading widget\.\.\./.test(t)),
    sliders: all('.widget-slider').length,
  };
}"""
# The status bar reads "<kernel name> | Idle" once a kernel is connected and idle.
KERNEL_IDLE = """[...document.querySelectorAll('#jp-main-statusbar .jp-StatusBar-TextItem')]
  .some(e => /^(?!No Kernel).+ \\| Idle$/.test(e.innerText.trim()))"""
# Run All has finished (or not begun): no cell queued or running, and the kernel idle.
RUN_FINISHED = f"""(n) => {{
  const p = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea .jp-InputPrompt')]
    .map(e => e.innerText.trim());
  return p.length === n && !p.includes('[*]:') && {KERNEL_IDLE};
}}"""


def run_all(page: Page, n_code: int) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # Wait until some cell is queued, or all have run already, then until all have finished.
    page.wait_for_function(
        """(n) => { const p = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea .jp-InputPrompt')]
             .map(e => e.innerText.trim());
           return p.includes('[*]:') || (p.length === n && p.every(t => /^\\[\\d+\\]:$/.test(t))); }""",
        arg=n_code,
        timeout=UI * 1000,
    )
    page.wait_for_function(RUN_FINISHED, arg=n_code, timeout=RUN_ALL * 1000, polling=500)


# What an output area shows: its text and its images.
SHOWN = "(o) => o.innerText.trim() + [...o.querySelectorAll('img')].map(i => i.src).join()"


def move_a_slider(page: Page) -> str | None:
    """Press -> on the first slider; return what failed, or None when the slider moved and, inside
    an ``interactive`` that shows something, the kernel redrew what it shows."""
    handle = page.locator(".widget-slider [role=slider]").first
    box = page.locator(".widget-interact").filter(has=handle)
    output = box.locator(".widget-output").first if box.count() else None
    value = handle.get_attribute("aria-valuenow")
    shown = output.evaluate(SHOWN) if output else ""
    handle.scroll_into_view_if_needed()
    handle.focus()
    page.keyboard.press("ArrowRight")
    try:
        page.wait_for_function(
            "([h, v]) => h.getAttribute('aria-valuenow') !== v", arg=[handle.element_handle(), value]
        )
    except Exception:
        return "the slider did not move on a key press"
    try:
        if shown:  # redrawn: something shown again, and not what was shown before
            page.wait_for_function(
                f"([o, before]) => {{ const now = ({SHOWN})(o); return now && now !== before; }}",
                arg=[output.element_handle(), shown],
                timeout=WIDGET_ROUND_TRIP * 1000,
            )
        for _ in range(2):  # idle, and still idle a moment later (the widget may sync again)
            page.wait_for_function(f"() => {KERNEL_IDLE}", timeout=WIDGET_ROUND_TRIP * 1000)
            page.wait_for_timeout(1000 * SCALE)
    except Exception:
        return (
            f"the interactive output was not redrawn within {WIDGET_ROUND_TRIP:.0f} s of moving its "
            "slider (a hang? on a slow machine, raise E2E_TIMEOUT_SCALE)"
        )
    return None


@contextlib.contextmanager
def stopwatch(record: dict[str, float], step: str) -> Iterator[None]:
    """Record the seconds ``step`` took (also when it fails) and write every record so far."""
    start = time.monotonic()
    try:
        yield
    finally:
        record[step] = round(time.monotonic() - start, 1)
        SHOTS.mkdir(parents=True, exist_ok=True)
        (SHOTS / "durations.json").write_text(json.dumps(DURATIONS, indent=1))


def screenshot(page: Page, name: str) -> Path:
    """The viewport, scrolled to the first widget or plot (the notebook scrolls inside the page)."""
    for sel in (".widget-slider", ".jp-OutputArea-output img"):
        first = page.locator(f".jp-Notebook {sel}").first
        if first.count():
            first.scroll_into_view_if_needed()
            break
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=path)
    return path


def judge(state: dict, sources: list[str]) -> list[str]:
    """What went wrong in a notebook after Run All, from the page's state (see PAGE_STATE)."""
    src = "\n".join(sources)
    found = []
    # Every code cell ran, once, in order, in this session.
    counts = [int(m[1]) if (m := re.fullmatch(r"\[(\d+)\]:", p)) else None for p in state["prompts"]]
    if len(counts) != len(sources) or None in counts or counts != sorted(set(counts)):
        found.append(f"not every cell finished, in order: prompts {state['prompts']}")
    found += [f"error output:\n{t[-2000:]}" for t in state["stderr"] if TRACEBACK.search(t)]
    # Widgets: live, not a text repr; a slider where the notebook makes one.
    found += [f"a widget shown as text: {t[:300]}" for t in state["text"] if WIDGET_REPR.search(t)]
    found += [f"a widget not rendered: {t[:300]}" for t in state["widget_errors"]]
    if re.search(r"^\s*(import|from) ipywidgets\b", src, re.M) and not state["widgets"]:
        found.append("the notebook imports ipywidgets but no widget is in the page")
    if re.search(r"\w*Slider\(", src) and not state["sliders"]:
        found.append("the notebook makes a slider but no slider is in the page")
    # Plots: images, loaded, wherever the notebook draws.
    if re.search(r"\bplt\.|d2l\.plot|show_images|imshow|\.fit\(", src) and not state["images"]:
        found.append("the notebook draws, but no image is in the page")
    found += [f"an image did not load ({w}x{h})" for w, h in state["images"] if not w or not h]
    return found


def tracebacks(page: Page) -> list[str]:
    return [t for t in page.evaluate(PAGE_STATE)["stderr"] if TRACEBACK.search(t)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(lab: Lab, browser: Browser, notebook: Path):
    sources = code_sources(notebook)
    digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(UI * 1000)
    page = context.new_page()
    problems: list[str] = []
    took = DURATIONS.setdefault(notebook.stem, {})
    try:
        # A fresh workspace per notebook: only this notebook open, in its own page.
        path = f"/lab/workspaces/e2e-{notebook.stem}/tree/{notebook.name}"
        with stopwatch(took, "page_load"):
            page.goto(f"{lab.url}{path}?reset&token={lab.token}", timeout=PAGE_LOAD * 1000)
            page.wait_for_function(RUN_FINISHED, arg=len(sources), timeout=PAGE_LOAD * 1000)  # kernel ready
        with stopwatch(took, "run_all"):
            run_all(page, len(sources))
        problems += judge(page.evaluate(PAGE_STATE), sources)
        if not problems and page.locator(".widget-slider").count():
            with stopwatch(took, "widget_round_trip"):
                failed = move_a_slider(page)
            if failed:
                problems.append(failed)
            problems += [f"error output after moving a slider:\n{t[-2000:]}" for t in tracebacks(page)]
    finally:  # without masking the error that brought us here
        shot = None
        with contextlib.suppress(Exception):
            shot = screenshot(page, notebook.stem)
        with contextlib.suppress(Exception):
            context.close()
        with contextlib.suppress(OSError):
            for k in lab.api("GET", "/api/kernels"):  # free its memory for the next notebook
                lab.api("DELETE", f"/api/kernels/{k['id']}")
    if hashlib.sha256(notebook.read_bytes()).hexdigest() != digest:
        problems.append("the notebook changed on disk during the test (JupyterLab must not save it)")
    assert not problems, f"{notebook.name} in JupyterLab (screenshot {shot}):\n" + "\n".join(problems)


# The judgement itself, on page states made up to show that each check can fail.
GOOD = {
    "prompts": ["[1]:", "[2]:", "[3]:"],
    "stderr": ["/x.py:3: UserWarning: a warning is not an error"],
    "text": ["(torch.Size([256, 1, 28, 28]), 235)"],
    "images": [[640, 480]],
    "widgets": ["batch_size 8"],
    "widget_errors": [],
    "sliders": 1,
}
SOURCES = ["import ipywidgets as widgets", "d2l.plt.plot([1, 2])", "widgets.IntSlider(value=3)"]
ERROR = """---------------------------------------------------------------------------
AssertionError                            Traceback (most recent call last)
Cell In[2], line 1
----> 1 assert False
AssertionError: """


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, None),
        ({"prompts": ["[1]:", "[ ]:", "[ ]:"]}, "not every cell finished"),
        ({"prompts": ["[1]:", "[3]:", "[2]:"]}, "not every cell finished"),
        ({"prompts": ["[1]:", "[2]:"]}, "not every cell finished"),
        ({"stderr": [ERROR]}, "error output"),
        ({"stderr": ["  Cell In[4], line 1\n    foo(\n       ^\nSyntaxError: incomplete"]}, "error output"),
        ({"text": ["IntSlider(value=3, max=10)"], "widgets": [], "sliders": 0}, "widget shown as text"),
        ({"widget_errors": ["Error displaying widget: model not found"]}, "widget not rendered"),
        ({"widgets": [], "sliders": 0}, "no widget is in the page"),
        ({"sliders": 0}, "no slider is in the page"),
        ({"images": []}, "no image is in the page"),
        ({"images": [[0, 0]]}, "did not load"),
    ],
    ids=["good", "unfinished", "out-of-order", "cell-missing", "traceback", "syntax-error", "widget-repr",
         "widget-unrendered", "no-widget", "no-slider", "no-image", "broken-image"],
)  # fmt: skip
def test_judge_catches(change, expected):
    found = judge({**GOOD, **change}, SOURCES)
    if expected is None:
        assert found == []
    else:
        assert any(expected in p for p in found), found


@pytest.mark.parametrize("value, expected", [(None, 1.0), ("3", 3.0), ("0.5", 0.5)])
def test_timeout_scale(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("E2E_TIMEOUT_SCALE", raising=False)
    else:
        monkeypatch.setenv("E2E_TIMEOUT_SCALE", value)
    assert timeout_scale() == expected


@pytest.mark.parametrize("value", ["0", "-2", "slow", ""])
def test_a_bad_timeout_scale_says_what_to_give(monkeypatch, value):
    monkeypatch.setenv("E2E_TIMEOUT_SCALE", value)
    with pytest.raises(ValueError, match="give a positive factor for every timeout"):
        timeout_scale()
