"""The notebooks in a real JupyterLab, driven through Debian's Chromium like a student would, then
presented with RISE like an instructor would.

One JupyterLab server, started as Binder starts it (``binder/start``, then the venv's ``jupyter lab
<folder>``, the command of ``make lab``; on loopback with a token, in the ``ci`` preset or
``$E2E_PRESET``), and one headless Chromium (Playwright). Per notebook: Run > Run All Cells, then no
cell failed, widgets are live (a slider moves and its output is redrawn) and plots are images; then
Alt+R (jupyterlab-rise), full screen, Space to the last slide: the presentation starts at the title
and visits every (sub)slide and fragment of the slide metadata (``tools/slides.py``) once, in order,
without an error. Screenshots go to ``build/e2e/`` (``NN_topic.png``, ``NN_topic-slide.png``).

RISE saves a notebook before it renders it, so the server serves a copy of ``notebooks/`` (autosave
off: the copy must stay unchanged until the presentation saves it). Its run cache starts empty, as a
fresh Binder session's; when the server stops, its runs are copied into ``$D2L_EXT_RUNS``.

The notebooks in file order are a student's walk through one Binder session. No test shuts a kernel
down: closing a notebook's browser context leaves its kernel running, and ``binder/one_kernel.py``
must shut it down when the next notebook starts its kernel. A thread samples the summed RSS of the
server and its descendants, less PyTorch's CUDA libraries (Binder installs the CPU-only build), every
half second. After the walk, closing a tab must shut its kernel down (``binder/jupyter/labconfig``);
the last test fails when the walk went over 2,000 MB (10^6 bytes each) or two kernels that had run
code were alive at once, and writes ``build/e2e/memory.json``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import Browser, Frame, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from repo_scripts import script

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
slides = script("tools/slides.py")
warm = script("tools/warm.py")
SHOTS = REPO / "build" / "e2e"
CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
START = REPO / "binder" / "start"  # Binder runs the server's command through it
# The kernels' preset: ci, as `make test`; E2E_PRESET=demo measures the walk as Binder runs it.
PRESET = os.environ.get("E2E_PRESET", "ci")
if PRESET not in ("ci", "demo", "full"):
    raise ValueError(f"E2E_PRESET={PRESET!r}: give ci, demo or full.")
# A Binder session's memory for the server and all its kernels (MB = 10^6 bytes).
MB, BINDER_LIMIT_MB = 1e6, 2000
# A kernel over this has run code: a fresh one, ready and idle, holds about 54 MB (binder/one_kernel.py).
FRESH_KERNEL_MB = 200
SAMPLE_EVERY = 0.5  # seconds between two samples of the walk's memory
CUDA_EVERY = 10.0  # seconds between two reads of a process's CUDA-library pages (see Walk.cuda_libs)
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
    """``$E2E_TIMEOUT_SCALE``: a factor for every timeout below (default 1)."""
    value = os.environ.get("E2E_TIMEOUT_SCALE", "1")
    with contextlib.suppress(ValueError):
        if float(value) > 0:
            return float(value)
    raise ValueError(f"E2E_TIMEOUT_SCALE={value!r}: give a positive factor for every timeout, e.g. 3.")


# Timeouts (seconds) only guard against a hang, not a verdict on speed: each is ten times or more
# what its step took on a busy 2-core CPU; E2E_TIMEOUT_SCALE multiplies them for a slower machine.
# SERVER_START: jupyter lab answers; PAGE_LOAD: the page and its kernel are ready, or RISE's
# slideshow is built; RUN_ALL: a whole notebook in the ci preset; WIDGET_ROUND_TRIP: a slider's
# callback redraws; UI: a click, a key (the next slide), a screenshot; API: one REST call to the
# server (a kernel's shutdown waits for the kernel).
SCALE = timeout_scale()
SERVER_START, PAGE_LOAD, RUN_ALL, WIDGET_ROUND_TRIP, UI, API = (
    SCALE * t for t in (150, 180, 1200, 120, 120, 120)
)

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
    log: Path
    root: Path  # the folder the server serves

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
        with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, sig)
            process.wait(wait)
            break
    for k in kernels:
        with contextlib.suppress(psutil.NoSuchProcess):
            k.kill()
    psutil.wait_procs(kernels, timeout=10)


@contextlib.contextmanager
def start_lab(home: Path, notebooks: str = "notebooks/") -> Iterator[Lab]:
    """JupyterLab as Binder starts it, on loopback with a token; its files go under ``home``."""
    settings = home / "settings"
    for plugin, values in LAB_SETTINGS.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")  # the venv's, as `make lab` uses
    cmd = [
        str(START),  # as Binder starts every session: thread caps, binder/jupyter's config
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
    # The user's Jupyter config and runtime files stay out of it (binder/start adds Binder's).
    runs = home / "runs"
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CONFIG_PATH", "D2L_EXT_RETRAIN")} | dict(
        D2L_EXT_PRESET=PRESET,
        D2L_EXT_RUNS=str(runs),
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
    )
    server_log = home / "server.log"
    log = server_log.open("w")
    process = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    server = Lab(f"http://127.0.0.1:{port}", token, process, server_log, REPO / notebooks)
    try:
        deadline = time.monotonic() + SERVER_START
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                server.api("GET", "/api/status")
                break
            time.sleep(0.5)
        else:
            raise RuntimeError(
                f"jupyter lab exited, or is not up in {SERVER_START:.0f} s (a hang? on a slow machine, "
                f"raise E2E_TIMEOUT_SCALE):\n{server_log.read_text()}"
            )
        yield server
    finally:
        stop(process)
        log.close()
        # Into `make test`'s run cache, where later tiers replay these runs.
        target = os.environ.get("D2L_EXT_RUNS", "")
        if runs.is_dir() and target and target.lower() != "off":
            shutil.copytree(runs, target, dirs_exist_ok=True)


class Walk(threading.Thread):
    """Samples the summed RSS of the server and all its descendants (kernels, their data-loader
    workers) less PyTorch's CUDA libraries in them, and which kernels are alive. Each sample belongs
    to the ``phase`` set last (the notebook being walked)."""

    def __init__(self, server: psutil.Process):
        super().__init__(daemon=True)
        self.server = server
        self.phase = "server"
        self.finished: list[str] = []  # the notebooks whose test ran to its end
        self.samples: list[dict] = []
        self.kernels_seen: set[int] = set()
        self.done = threading.Event()
        self.cuda_cache: dict[int, tuple[float, int]] = {}  # pid -> (when read, CUDA libraries' bytes)

    def sample(self) -> dict:
        rss = cuda = 0
        kernels = {}  # pid -> its resident bytes, less CUDA libraries
        for process in [self.server, *self.server.children(recursive=True)]:
            try:
                with process.oneshot():
                    if process.status() == psutil.STATUS_ZOMBIE:
                        continue
                    own = process.memory_info().rss
                    rss += own
                    libs = self.cuda_libs(process.pid)
                    if any("ipykernel" in part for part in process.cmdline()):
                        kernels[process.pid] = own - libs
                cuda += libs
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue  # it ended while being read
        return {"phase": self.phase, "rss": rss, "cuda_libs": cuda, "binder": rss - cuda, "kernels": kernels}

    def cuda_libs(self, pid: int) -> int:
        """The resident bytes of CUDA libraries in ``pid``, read at most every ``CUDA_EVERY`` seconds
        once loaded: a kernel's smaps runs to ~100,000 lines, and parsing it twice a second would take
        CPU from the training it measures; the libraries' pages, once loaded, barely move."""
        now = time.monotonic()
        cached = self.cuda_cache.get(pid)
        if cached is None or not cached[1] or now - cached[0] > CUDA_EVERY:  # 0: not loaded yet
            cached = self.cuda_cache[pid] = (now, warm.cuda_library_rss(pid))
        return cached[1]

    def run(self) -> None:
        while not self.done.is_set():
            try:
                sample = self.sample()
            except psutil.NoSuchProcess:  # the server is gone
                return
            self.samples.append(sample)
            self.kernels_seen.update(sample["kernels"])
            self.done.wait(SAMPLE_EVERY)


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    """The server on a copy of notebooks/ (RISE saves what it presents), named as in the repository."""
    home = tmp_path_factory.mktemp("lab")
    served = home / "notebooks"
    served.mkdir()
    for nb in NOTEBOOKS:
        shutil.copy2(nb, served / nb.name)
    with start_lab(home, str(served)) as server:
        yield server


@pytest.fixture(scope="module")
def walk(lab: Lab) -> Iterator[Walk]:
    """The memory of the server and its kernels, sampled from the server's start to the module's end."""
    sampler = Walk(psutil.Process(lab.process.pid))
    sampler.start()
    try:
        yield sampler
    finally:
        sampler.done.set()
        sampler.join()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise FileNotFoundError(
            f"{CHROMIUM} is missing: `make setup` installs Debian's chromium (as root), "
            "or set E2E_CHROMIUM to a Chromium binary."
        )
    with sync_playwright() as p:  # closes the browser on the way out
        yield p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


@contextlib.contextmanager
def open_page(browser: Browser, lab: Lab, path: str) -> Iterator[Page]:
    """A fresh browser context on ``path`` (under the served folder) in a fresh workspace of its
    own; closing the context leaves the notebook's kernel running."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(UI * 1000)
    page = context.new_page()
    try:
        workspace = "e2e-" + Path(path).stem
        page.goto(
            f"{lab.url}/lab/workspaces/{workspace}/tree/{path}?reset&token={lab.token}",
            timeout=PAGE_LOAD * 1000,
        )
        yield page
    finally:
        with contextlib.suppress(Exception):
            context.close()


def code_cells(notebook: Path) -> tuple[list[str], list[bool]]:
    """Per code cell, its source and whether JupyterLab collapses it (the validation cells:
    tools/slides.py); a collapsed cell shows no prompt, so its execution count is not in the page."""
    code = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    return ["".join(c["source"]) for c in code], [
        bool(c.get("metadata", {}).get("jupyter", {}).get("source_hidden")) for c in code
    ]


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
PROMPTS = """[...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea .jp-InputPrompt')]
  .map(e => e.innerText.trim())"""
# Run All has finished (or not begun): no cell queued or running, and the kernel idle.
RUN_FINISHED = (
    f"(n) => {{ const p = {PROMPTS}; return p.length === n && !p.includes('[*]:') && {KERNEL_IDLE}; }}"
)
# Run All has begun: some cell is queued, or all have run already.
RUN_STARTED = f"""(n) => {{ const p = {PROMPTS};
  return p.includes('[*]:') || (p.length === n && p.every(t => /^\\[\\d+\\]:$/.test(t))); }}"""


def run_all(page: Page, n_code: int) -> None:
    """Run > Run All Cells, and wait until it has finished; ``n_code``: the code cells that show a
    prompt (not the collapsed ones)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    page.wait_for_function(RUN_STARTED, arg=n_code, timeout=UI * 1000)
    page.wait_for_function(RUN_FINISHED, arg=n_code, timeout=RUN_ALL * 1000, polling=500)
    # A collapsed cell shows no prompt: one queued after the last prompt could still be about to
    # run when the kernel is idle between two cells, so idle must hold a moment later too.
    page.wait_for_timeout(1000 * SCALE)
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


def judge(state: dict, sources: list[str], hidden: list[bool]) -> list[str]:
    """What went wrong in a notebook after Run All, from the page's state (see PAGE_STATE);
    ``hidden``: per code cell, whether its source is collapsed (no prompt in the page)."""
    src = "\n".join(sources)
    found = []
    # Every code cell ran, once, in order, in this session: in a fresh kernel the k-th code cell
    # gets count k, so the prompts shown also prove that the collapsed cells before them ran.
    counts = [int(m[1]) if (m := re.fullmatch(r"\[(\d+)\]:", p)) else None for p in state["prompts"]]
    shown = [k for k, h in enumerate(hidden, start=1) if not h]
    if counts != shown:
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


def judge_saved(nb: dict) -> list[str]:
    """What the notebook that RISE saved says about the run: every code cell, collapsed ones too,
    ran once, in order, without an error."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    found = []
    if counts != list(range(1, len(code) + 1)):
        found.append(f"the saved notebook: not every cell ran once, in order: execution counts {counts}")
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    found += [f"the saved notebook has an error output: {o['ename']}: {o['evalue']}" for o in errors]
    return found


# RISE's slideshow, in the iframe of its panel: the (sub)slide shown (RISE names each
# ``slide-<h>-<v>``) with the fragments shown so far, whether a key press leads further (reveal.js
# enables its next arrows while a fragment or a slide is left), the slide's height over the
# screen's, and whether a plot is in sight.
PRESENTATION = r"""() => {
  const reveal = document.querySelector('.reveal');
  const slide = document.querySelector('.reveal .slides > section.present > section.present');
  if (!reveal || !slide) return null;
  const seen = (e) => !e.closest('.fragment:not(.visible)') && !e.closest('.reveal-skip');
  return {
    step: `${slide.id}:${slide.querySelectorAll('.fragment.visible').length}`,
    next: [...reveal.querySelectorAll('.controls .navigate-right, .controls .navigate-down')]
      .some(b => b.classList.contains('enabled')),
    height: slide.getBoundingClientRect().height / reveal.getBoundingClientRect().height,
    plot: [...slide.querySelectorAll('.jp-OutputArea-output img')].some(i => seen(i) && i.naturalWidth > 0),
  };
}"""
# Every cell of the slideshow, skipped ones too: the prompts shown (a collapsed cell has none) and
# the stderr outputs.
SLIDESHOW_CELLS = r"""() => {
  const outputs = (mime) => [...document.querySelectorAll(
    `.reveal .slides .jp-OutputArea-output[data-mime-type="${mime}"]`)].map(e => e.textContent);
  return {
    prompts: [...document.querySelectorAll('.reveal .slides .jp-CodeCell .jp-InputArea .jp-InputPrompt')]
      .map(e => e.textContent.trim()),
    stderr: outputs('application/vnd.jupyter.stderr'),
  };
}"""
# The RISE panel's iframe holds a built slideshow (the iframe is same-origin).
SLIDESHOW_BUILT = """() => [...document.querySelectorAll('iframe')].some(f => f.contentDocument &&
  f.contentDocument.querySelector('.reveal .slides > section.present > section.present'))"""
ANIMATIONS_DONE = "() => document.getAnimations().every(a => a.playState !== 'running')"


def present(page: Page, name: str, limit: int) -> dict:
    """Select the title, Alt+R (RISE's "Render as Reveal Slideshow"), full screen, Space to the end
    (``limit`` presses at most); saves ``<name>-slide.png``, the first slide with a plot in sight."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").first.click()
    page.keyboard.press("Escape")  # command mode: the slideshow starts at the selected cell
    page.keyboard.press("Alt+r")
    page.wait_for_function(SLIDESHOW_BUILT, timeout=PAGE_LOAD * 1000, polling=250)
    frame: Frame = next(f for f in page.frames if "/rise/" in f.url)
    page.get_by_title("Open the slideshow in full screen").click()  # also gives the slideshow the keys
    frame.wait_for_function("() => document.fullscreenElement !== null")
    state = {"steps": [], "tallest": {}, "shot": None, "ended": False}
    now = frame.evaluate(PRESENTATION)
    for _ in range(limit):
        state["steps"].append(now["step"])
        slide = now["step"].split(":")[0]
        state["tallest"][slide] = max(state["tallest"].get(slide, 0), round(now["height"], 2))
        if now["plot"] and state["shot"] is None:
            frame.wait_for_function(ANIMATIONS_DONE)  # the slide in place, not on its way in
            state["shot"] = str(SHOTS / f"{name}-slide.png")
            page.screenshot(path=state["shot"])
        if not now["next"]:
            state["ended"] = True
            break
        page.keyboard.press("Space")
        frame.wait_for_function(
            f"(before) => {{ const s = ({PRESENTATION})(); return s !== null && s.step !== before; }}",
            arg=now["step"],
        )
        now = frame.evaluate(PRESENTATION)
    return state | frame.evaluate(SLIDESHOW_CELLS)


STEP = re.compile(r"slide-(\d+)-(\d+):(\d+)")
# A slide may be this many screens tall (1280x1000, full screen): RISE cuts what lies below the
# screen, so a taller slide loses lines the hall cannot see (tag a cell 'subslide').
TALLEST = 1.15


def judge_presentation(state: dict, expected_steps: int) -> list[str]:
    """What went wrong in a presentation (see present): it starts at the title slide, shows every
    (sub)slide and fragment of the slide metadata once, in order, to the end, no slide much taller
    than the screen, and the run's outputs without an error."""
    steps, found = state["steps"], []
    if not steps or steps[0] != "slide-0-0:0":
        found.append(f"the slideshow did not start at the title slide: {steps[:1]}")
    order = [tuple(map(int, m.groups())) if (m := STEP.fullmatch(s)) else None for s in steps]
    if None in order or order != sorted(set(order)):
        found.append(f"slides or fragments out of order, or twice: {steps}")
    if not state["ended"] or len(steps) != expected_steps:
        where = "to the end" if state["ended"] else "without reaching the end"
        found.append(
            f"{len(steps)} slides and fragments shown, {where}; the slide metadata makes {expected_steps}"
        )
    found += [
        f"{slide} is {height:.2f} screens tall, more than {TALLEST}: tag a cell in it 'subslide'"
        for slide, height in state["tallest"].items()
        if height > TALLEST
    ]
    found += [f"error output in the slideshow:\n{t[-2000:]}" for t in state["stderr"] if TRACEBACK.search(t)]
    unrun = [p for p in state["prompts"] if not re.fullmatch(r"\[\d+\]:", p)]
    if unrun or not state["prompts"]:
        found.append(f"the slideshow shows code cells without this run's outputs: prompts {unrun[:5]}")
    return found


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_in_jupyterlab(lab: Lab, walk: Walk, browser: Browser, notebook: Path):
    walk.phase = notebook.stem
    sources, hidden = code_cells(notebook)
    shown = hidden.count(False)  # code cells with a prompt in the page
    digest = hashlib.sha256(notebook.read_bytes()).hexdigest()
    served = lab.root / notebook.name
    problems: list[str] = []
    shot = None
    with open_page(browser, lab, notebook.name) as page:
        try:
            page.wait_for_function(RUN_FINISHED, arg=shown, timeout=PAGE_LOAD * 1000)  # kernel ready
            run_all(page, shown)
            problems += judge(page.evaluate(PAGE_STATE), sources, hidden)
            if not problems and page.locator(".widget-slider").count():
                if failed := move_a_slider(page):
                    problems.append(failed)
                stderr = page.evaluate(PAGE_STATE)["stderr"]
                problems += [
                    f"error output after moving a slider:\n{t[-2000:]}" for t in stderr if TRACEBACK.search(t)
                ]
            shot = screenshot(page, notebook.stem)
            if hashlib.sha256(served.read_bytes()).hexdigest() != digest:
                problems.append(
                    "the notebook changed on disk before the presentation (JupyterLab must not save it)"
                )
            if not problems:
                expected = slides.steps(json.loads(notebook.read_text()))
                state = present(page, notebook.stem, limit=2 * expected + 10)
                problems += judge_presentation(state, expected)
                problems += judge_saved(json.loads(served.read_text()))  # RISE saved it: collapsed cells too
                shot = state["shot"] or shot
        finally:  # without masking the error that brought us here
            with contextlib.suppress(Exception):
                shot = shot or screenshot(page, notebook.stem)
    if hashlib.sha256(notebook.read_bytes()).hexdigest() != digest:
        problems.append("the notebook in the repository changed during the test (only its copy is served)")
    assert not problems, f"{notebook.name} in JupyterLab (screenshot {shot}):\n" + "\n".join(problems)
    walk.finished.append(notebook.stem)


def test_closing_a_tab_shuts_its_kernel_down(lab: Lab, walk: Walk, browser: Browser):
    """After the walk: the first notebook again, its kernel started (the last one's shut down), then
    its tab closed: JupyterLab shuts the kernel down (binder/jupyter/labconfig sets kernelShutdown)."""
    notebook = NOTEBOOKS[0]
    walk.phase = f"{notebook.stem} again, tab closed"
    with open_page(browser, lab, notebook.name) as page:
        page.wait_for_function(f"() => {KERNEL_IDLE}", timeout=PAGE_LOAD * 1000)
        kernels = lab.api("GET", "/api/kernels")
        assert len(kernels) == 1, f"one kernel should run, the first notebook's: {kernels}"
        tab = page.locator(".lm-TabBar-tab", has_text=notebook.name)
        tab.locator(".lm-TabBar-tabCloseIcon").click()
        discard = page.locator(".jp-Dialog").get_by_role("button", name="Discard")
        with contextlib.suppress(PlaywrightTimeout):  # opening marks it changed: close without saving
            discard.wait_for(timeout=5000 * SCALE)
            discard.click()
        tab.wait_for(state="detached")
        deadline = time.monotonic() + API
        while (kernels := lab.api("GET", "/api/kernels")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert kernels == [], f"the notebook's tab is closed, but its kernel still runs: {kernels}"


def test_the_walk_fits_in_a_binder_session(lab: Lab, walk: Walk):
    """The walk's peak within Binder's 2,000 MB, and never two kernels that had run code at once.
    Runs last, after the notebooks (pytest keeps the file's order)."""
    walked = [s for s in walk.samples if s["phase"] != "server"]
    if not walked:
        pytest.skip("no notebook was walked: run the whole file (the notebooks' tests come first)")
    from d2l_ext.runs import machine_name  # imports torch: only here

    peak = max(walked, key=lambda s: s["binder"])
    phases = list(dict.fromkeys(s["phase"] for s in walk.samples))
    per_phase = {
        phase: round(max(s["binder"] for s in walk.samples if s["phase"] == phase) / MB) for phase in phases
    }
    busy = [[pid for pid, b in s["kernels"].items() if b > FRESH_KERNEL_MB * MB] for s in walked]
    crowded = [s for s, pids in zip(walked, busy, strict=True) if len(pids) > 1]
    record = {
        "peak_mb": round(peak["binder"] / MB),
        "peak_at": peak["phase"],
        "limit_mb": BINDER_LIMIT_MB,
        "peak_rss_with_cuda_libs_mb": round(max(s["rss"] for s in walked) / MB),
        # Each notebook's from its opening to the next one's (so with the shutdown of the kernel
        # before it); "server": before the first notebook; "... again, tab closed": the test after.
        "peak_mb_by_step": per_phase,
        "notebooks_finished": walk.finished,
        "kernels_seen": len(walk.kernels_seen),
        "most_kernels_at_once": max(len(s["kernels"]) for s in walked),  # a fresh one beside the last
        "most_busy_kernels_at_once": max(map(len, busy)),
        "kernels_shut_down_by_one_kernel": [  # binder/one_kernel.py logs each kernel it shuts down
            line.split("] ", 1)[-1]
            for line in lab.log.read_text().splitlines()
            if "One kernel at a time" in line
        ],
        "samples": len(walk.samples),
        "sample_every_s": SAMPLE_EVERY,
        "preset": PRESET,
        "machine": machine_name(),
        "date": datetime.date.today().isoformat(),
    }
    SHOTS.mkdir(parents=True, exist_ok=True)
    (SHOTS / "memory.json").write_text(json.dumps(record, indent=1) + "\n")
    assert not crowded, (
        f"{len(crowded)} samples with two kernels or more that had run code, first in "
        f"{crowded[0]['phase']}: {crowded[0]['kernels']} (binder/one_kernel.py should have shut the "
        "earlier down)"
    )
    assert peak["binder"] <= BINDER_LIMIT_MB * MB, (
        f"the walk took {peak['binder'] / MB:.0f} MB at its peak (in {peak['phase']}), over a Binder "
        f"session's {BINDER_LIMIT_MB} MB; by step: {per_phase}"
    )
    missing = [nb.stem for nb in NOTEBOOKS if nb.stem not in walk.finished]
    assert not missing, (
        f"the walk did not finish {missing}: its peak ({record['peak_mb']} MB) is not the whole walk's"
    )


# The judgement itself, on page states made up to show that each check can fail. The third code
# cell is collapsed (no prompt): [4] after [2] shows that it ran.
GOOD = {
    "prompts": ["[1]:", "[2]:", "[4]:"],
    "stderr": ["/x.py:3: UserWarning: a warning is not an error"],
    "text": ["(torch.Size([256, 1, 28, 28]), 235)"],
    "images": [[640, 480]],
    "widgets": ["batch_size 8"],
    "widget_errors": [],
    "sliders": 1,
}
SOURCES = [
    "import ipywidgets as widgets",
    "d2l.plt.plot([1, 2])",
    "assert True",
    "widgets.IntSlider(value=3)",
]
HIDDEN = [False, False, True, False]
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
        ({"prompts": ["[1]:", "[4]:", "[2]:"]}, "not every cell finished"),
        ({"prompts": ["[1]:", "[2]:"]}, "not every cell finished"),
        ({"prompts": ["[1]:", "[2]:", "[3]:"]}, "not every cell finished"),
        ({"prompts": ["[2]:", "[3]:", "[5]:"]}, "not every cell finished"),
        ({"stderr": [ERROR]}, "error output"),
        ({"stderr": ["  Cell In[4], line 1\n    foo(\n       ^\nSyntaxError: incomplete"]}, "error output"),
        ({"text": ["IntSlider(value=3, max=10)"], "widgets": [], "sliders": 0}, "widget shown as text"),
        ({"widget_errors": ["Error displaying widget: model not found"]}, "widget not rendered"),
        ({"widgets": [], "sliders": 0}, "no widget is in the page"),
        ({"sliders": 0}, "no slider is in the page"),
        ({"images": []}, "no image is in the page"),
        ({"images": [[0, 0]]}, "did not load"),
    ],
    ids=["good", "unfinished", "out-of-order", "cell-missing", "collapsed-skipped", "not-a-fresh-kernel",
         "traceback", "syntax-error", "widget-repr", "widget-unrendered", "no-widget", "no-slider",
         "no-image", "broken-image"],
)  # fmt: skip
def test_judge_catches(change, expected):
    found = judge({**GOOD, **change}, SOURCES, HIDDEN)
    assert found == [] if expected is None else any(expected in p for p in found), found


def saved(counts: list, error: bool = False) -> dict:
    code = [{"cell_type": "code", "execution_count": n, "outputs": []} for n in counts]
    if error:
        code[-1]["outputs"] = [
            {"output_type": "error", "ename": "AssertionError", "evalue": "x", "traceback": []}
        ]
    return {"cells": [{"cell_type": "markdown", "source": "# 07"}, *code]}


@pytest.mark.parametrize(
    "nb, expected",
    [
        (saved([1, 2, 3]), None),
        (saved([1, 2, None]), "not every cell ran once, in order"),
        (saved([1, 3, 2]), "not every cell ran once, in order"),
        (saved([1, 2, 3], error=True), "an error output: AssertionError: x"),
    ],
    ids=["good", "unrun", "out-of-order", "error"],
)
def test_judge_saved_catches(nb, expected):
    found = judge_saved(nb)
    assert found == [] if expected is None else any(expected in p for p in found), found


# A presentation's judgement, on states made up to show that each check can fail.
PRESENTED = {
    "steps": ["slide-0-0:0", "slide-1-0:0", "slide-1-0:1", "slide-1-1:0", "slide-2-0:0"],
    "ended": True,
    "stderr": ["/x.py:3: UserWarning: a warning is not an error"],
    "prompts": ["[1]:", "[2]:", "[3]:"],
    "tallest": {"slide-0-0": 0.6, "slide-1-0": 1.0, "slide-1-1": 1.15, "slide-2-0": 0.2},
}
T, A, B, C, D = PRESENTED["steps"]  # the title, a slide, its fragment, a subslide, the last slide


@pytest.mark.parametrize(
    "change, expected_steps, expected",
    [
        ({}, 5, None),
        ({"steps": PRESENTED["steps"][1:]}, 4, "did not start at the title slide"),
        ({"steps": [T, B, A, C, D]}, 5, "out of order"),
        ({"steps": [T, A, A, C, D]}, 5, "or twice"),
        ({"steps": [T, "slide-1-0", B, C, D]}, 5, "out of order"),
        ({"ended": False}, 5, "without reaching the end"),
        ({}, 6, "5 slides and fragments shown, to the end; the slide metadata makes 6"),
        ({"stderr": [ERROR]}, 5, "error output in the slideshow"),
        ({"prompts": ["[1]:", "[ ]:", "[3]:"]}, 5, "without this run's outputs"),
        ({"prompts": []}, 5, "without this run's outputs"),
        ({"tallest": {"slide-0-0": 0.6, "slide-1-0": 1.3}}, 5, "slide-1-0 is 1.30 screens tall"),
    ],
    ids=["good", "not-at-title", "out-of-order", "twice", "unknown-step", "not-ended", "step-missing",
         "traceback", "unrun-cell", "no-cells", "too-tall"],
)  # fmt: skip
def test_judge_presentation_catches(change, expected_steps, expected):
    found = judge_presentation({**PRESENTED, **change}, expected_steps)
    assert found == [] if expected is None else any(expected in p for p in found), found


@pytest.mark.parametrize(
    "value, expected",
    [(None, 1.0), ("3", 3.0), ("0.5", 0.5), ("0", None), ("-2", None), ("slow", None), ("", None)],
)
def test_timeout_scale(monkeypatch, value, expected):
    monkeypatch.delenv("E2E_TIMEOUT_SCALE", raising=False)
    if value is not None:
        monkeypatch.setenv("E2E_TIMEOUT_SCALE", value)
    if expected is None:  # a bad one says what to give
        with pytest.raises(ValueError, match="give a positive factor for every timeout"):
            timeout_scale()
    else:
        assert timeout_scale() == expected
