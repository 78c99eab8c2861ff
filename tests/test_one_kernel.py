"""Binder's one-kernel-at-a-time kernel manager (``binder/one_kernel.py``), with real ipykernel
kernels, and the start script that configures it (``binder/start``, ``binder/jupyter/``).

The manager shuts every other kernel down once a new one has started, and none when the start
fails; a reconnect to a running kernel and a restart shut nothing down, and two starts at once
leave one kernel. The walk through all the notebooks in JupyterLab, with the memory it takes, is in
tests/test_lab_e2e.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from jupyter_client.kernelspec import NoSuchKernel
from repo_scripts import script

REPO = Path(__file__).resolve().parents[1]
START = REPO / "binder" / "start"
CONFIG = REPO / "binder" / "jupyter"
one_kernel = script("binder/one_kernel.py")
# Timeouts (seconds) only guard against a hang: a kernel starts in a few seconds on a busy 2-core CPU.
KERNEL_TIMEOUT, SCRIPT_TIMEOUT = 120, 120


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, KERNEL_TIMEOUT))


def alive(km, kernel_id: str) -> bool:
    """The kernel is the manager's and its process runs."""
    if kernel_id not in km:
        return False
    pid = km.get_kernel(kernel_id).provisioner.pid
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def manager(tmp_path, caplog):
    """A function that makes the manager in the running loop (its lock belongs to that loop) and
    shuts its kernels down when the test ends."""
    made = []

    def make():
        # Connection files in the test's folder: a failed start leaves its file behind (jupyter_client).
        km = one_kernel.OneKernelManager(root_dir=str(tmp_path), connection_dir=str(tmp_path))
        km.log = logging.getLogger("one_kernel_test")
        made.append(km)
        return km

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    caplog.set_level(logging.INFO, logger="one_kernel_test")
    yield make
    for km in made:
        pids = [km.get_kernel(k).provisioner.pid for k in km.list_kernel_ids()]
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(shut_down(km), KERNEL_TIMEOUT))
        for pid in pids:  # whatever survived a failed test
            with contextlib.suppress(Exception):
                psutil.Process(pid).kill()


async def shut_down(km) -> None:
    """Every listed kernel. Not shutdown_all: jupyter_client keeps a failed start's id among its pending
    kernels, and shutdown_all fails on it and leaves the running kernel, whose open sockets then hang
    the manager's garbage collection at the end of the session."""
    await asyncio.gather(
        *(km.shutdown_kernel(k, now=True) for k in km.list_kernel_ids()), return_exceptions=True
    )


def session(km, notebook: str) -> dict[str, str]:
    """A kernel's environment as the server's session manager gives it: the notebook's OS path."""
    return {**os.environ, "JPY_SESSION_NAME": os.path.join(km.root_dir, notebook)}


def test_a_new_kernel_shuts_the_other_down(manager, caplog):
    async def walk():
        km = manager()
        first = await km.start_kernel(kernel_name="python3", path="a", env=session(km, "a/00.ipynb"))
        first_pid = km.get_kernel(first).provisioner.pid
        assert alive(km, first)
        second = await km.start_kernel(kernel_name="python3", path="b", env=session(km, "b/01.ipynb"))
        return km, first, first_pid, second

    km, first, first_pid, second = run(walk())
    assert second != first
    assert km.list_kernel_ids() == [second]
    assert alive(km, second)
    assert not psutil.pid_exists(first_pid) or psutil.Process(first_pid).status() == psutil.STATUS_ZOMBIE
    said = [r.getMessage() for r in caplog.records if "One kernel at a time" in r.getMessage()]
    assert said == [
        f"One kernel at a time: shutting down kernel {first} (a/00.ipynb) to start one for b/01.ipynb"
    ]


def test_a_failed_start_keeps_the_running_kernel(manager, caplog):
    async def walk():
        km = manager()
        first = await km.start_kernel(kernel_name="python3", path="a", env=session(km, "a/00.ipynb"))
        pid = km.get_kernel(first).provisioner.pid
        with pytest.raises(NoSuchKernel):
            await km.start_kernel(kernel_name="no-such-kernel", path="b", env=session(km, "b/01.ipynb"))
        return km, first, pid

    km, first, pid = run(walk())
    assert km.list_kernel_ids() == [first] and alive(km, first)
    assert km.get_kernel(first).provisioner.pid == pid  # the same process: the notebook's state is kept
    assert km._started_for == {first: "a/00.ipynb"}
    assert not [r for r in caplog.records if "One kernel at a time" in r.getMessage()]


def test_a_reconnect_and_a_restart_keep_the_kernel(manager, caplog):
    async def walk():
        km = manager()
        kernel = await km.start_kernel(kernel_name="python3", path="a/00.ipynb")
        pid = km.get_kernel(kernel).provisioner.pid
        again = await km.start_kernel(kernel_id=kernel, kernel_name="python3", path="a/00.ipynb")
        await km.restart_kernel(kernel)
        return km, kernel, pid, again

    km, kernel, pid, again = run(walk())
    assert again == kernel
    assert km.list_kernel_ids() == [kernel] and alive(km, kernel)
    assert km.get_kernel(kernel).provisioner.pid != pid  # restarted: a new process, the same kernel
    assert not [r for r in caplog.records if "One kernel at a time" in r.getMessage()]


def test_two_starts_at_once_leave_one_kernel(manager):
    async def walk():
        km = manager()
        ids = await asyncio.gather(
            km.start_kernel(kernel_name="python3", path="a/00.ipynb"),
            km.start_kernel(kernel_name="python3", path="b/01.ipynb"),
        )
        return km, ids

    km, ids = run(walk())
    assert len(set(ids)) == 2
    assert len(km.list_kernel_ids()) == 1 and km.list_kernel_ids()[0] in ids


def start_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that ``binder/start`` gives its command."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_CONFIG_PATH"} | (extra or {})
    out = subprocess.run(
        [START, "env", "-0"], env=env, capture_output=True, text=True, check=True, timeout=SCRIPT_TIMEOUT
    ).stdout
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)


def test_start_puts_the_binder_config_first_on_the_jupyter_config_path(tmp_path):
    assert start_env()["JUPYTER_CONFIG_PATH"] == str(CONFIG)
    theirs = start_env({"JUPYTER_CONFIG_PATH": "/opt/conf"})["JUPYTER_CONFIG_PATH"]
    assert theirs == f"{CONFIG}:/opt/conf"
    # Found from the script's own place, whatever the working directory and however it is called.
    moved = tmp_path / "elsewhere" / "binder"
    moved.mkdir(parents=True)
    (moved / "start").write_bytes(START.read_bytes())
    (moved / "start").chmod(0o755)
    out = subprocess.run(
        ["bash", "binder/start", "printenv", "JUPYTER_CONFIG_PATH"],
        cwd=moved.parent,
        env={k: v for k, v in os.environ.items() if k != "JUPYTER_CONFIG_PATH"},
        capture_output=True,
        text=True,
        check=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert out.stdout.strip() == str(moved / "jupyter")


def test_config_dir_holds_the_manager_and_the_tab_setting():
    assert (CONFIG / "jupyter_server_config.py").exists()
    overrides = (CONFIG / "labconfig" / "default_setting_overrides.json").read_text()
    assert json.loads(overrides)["@jupyterlab/notebook-extension:tracker"] == {"kernelShutdown": True}


def show_config(*command: str) -> str:
    jupyter = Path(sys.executable).with_name("jupyter")
    env = {k: v for k, v in os.environ.items() if k not in ("JUPYTER_CONFIG_PATH", "JUPYTER_CONFIG_DIR")}
    env["JUPYTER_CONFIG_DIR"] = "/nonexistent-jupyter-config"  # the user's own config stays out
    run = subprocess.run(
        [*command, str(jupyter), "server", "--show-config"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def test_the_server_binder_starts_uses_the_manager_and_make_lab_does_not():
    assert "kernel_manager_class = <class 'one_kernel.OneKernelManager'>" in show_config(str(START))
    assert "OneKernelManager" not in show_config()
