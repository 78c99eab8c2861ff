"""Binder's one-kernel-at-a-time kernel manager (``binder/one_kernel.py``), with real ipykernel
kernels, and the start script that configures it and the thread pools (``binder/start``). The walk
through all the notebooks in JupyterLab, with the memory it takes, is in tests/test_lab_e2e.py.
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
from repo_scripts import REPO, script

START = REPO / "binder" / "start"
CONFIG = REPO / "binder" / "jupyter"
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
JUPYTER = Path(sys.executable).with_name("jupyter")
one_kernel = script("binder/one_kernel.py")
# Timeouts (seconds) only guard against a hang: a kernel starts in a few seconds on a busy 2-core CPU.
KERNEL_TIMEOUT, SCRIPT_TIMEOUT = 120, 120
LOG = logging.getLogger("one_kernel_test")
LOG.setLevel(logging.INFO)  # the manager's shutdown lines, for caplog


def pid(km, kernel_id: str) -> int:
    return km.get_kernel(kernel_id).provisioner.pid


def running(process: int) -> bool:
    return psutil.pid_exists(process) and psutil.Process(process).status() != psutil.STATUS_ZOMBIE


def in_manager(tmp_path: Path, walk) -> None:
    """Runs ``walk(km)`` with a fresh manager made in the running loop (its lock belongs to that loop),
    then shuts its kernels down."""

    async def main():
        # Connection files in the test's folder: a failed start leaves its file behind (jupyter_client).
        km = one_kernel.OneKernelManager(root_dir=str(tmp_path), connection_dir=str(tmp_path), log=LOG)
        try:
            await walk(km)
        finally:
            pids = [pid(km, k) for k in km.list_kernel_ids()]
            # Not shutdown_all: jupyter_client keeps a failed start's id among its pending kernels, and
            # shutdown_all fails on it and leaves the running kernel, whose open sockets then hang the
            # manager's garbage collection at the end of the session.
            await asyncio.gather(
                *(km.shutdown_kernel(k, now=True) for k in km.list_kernel_ids()), return_exceptions=True
            )
            for p in pids:  # whatever survived a failed test
                with contextlib.suppress(psutil.Error):
                    psutil.Process(p).kill()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    asyncio.run(asyncio.wait_for(main(), KERNEL_TIMEOUT))


def start(km, notebook: str, kernel_name: str = "python3", **kwargs):
    """A kernel started as the server does: in the notebook's folder, with its OS path in the environment."""
    env = {**os.environ, "JPY_SESSION_NAME": os.path.join(km.root_dir, notebook)}
    return km.start_kernel(kernel_name=kernel_name, path=os.path.dirname(notebook), env=env, **kwargs)


def shutdowns(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("One kernel at a time")]


def test_a_new_kernel_shuts_the_other_down_and_a_reconnect_or_restart_does_not(tmp_path, caplog):
    async def walk(km):
        first = await start(km, "a/00.ipynb")
        first_pid = pid(km, first)
        assert await start(km, "a/00.ipynb", kernel_id=first) == first  # a reconnect: nothing starts
        await km.restart_kernel(first)
        restarted = pid(km, first)
        assert km.list_kernel_ids() == [first] and restarted != first_pid and running(restarted)
        assert not shutdowns(caplog)
        second = await start(km, "b/01.ipynb")
        assert second != first and km.list_kernel_ids() == [second] and running(pid(km, second))
        assert not running(restarted)
        assert shutdowns(caplog) == [
            f"One kernel at a time: shutting down kernel {first} (a/00.ipynb) to start one for b/01.ipynb"
        ]

    in_manager(tmp_path, walk)


def test_a_failed_start_keeps_the_running_kernel(tmp_path, caplog):
    async def walk(km):
        first = await start(km, "a/00.ipynb")
        first_pid = pid(km, first)
        with pytest.raises(NoSuchKernel):
            await start(km, "b/01.ipynb", kernel_name="no-such-kernel")
        assert km.list_kernel_ids() == [first] and pid(km, first) == first_pid  # the same process
        assert running(first_pid)
        assert km._started_for == {first: "a/00.ipynb"}

    in_manager(tmp_path, walk)
    assert not shutdowns(caplog)


def test_two_starts_at_once_leave_one_kernel(tmp_path):
    async def walk(km):
        ids = await asyncio.gather(start(km, "a/00.ipynb"), start(km, "b/01.ipynb"))
        assert len(set(ids)) == 2
        assert len(km.list_kernel_ids()) == 1 and km.list_kernel_ids()[0] in ids

    in_manager(tmp_path, walk)


def clean_run(*command: str | Path, cwd: Path = REPO, **env: str) -> str:
    """``command``'s output, run without this environment's Jupyter config and thread settings."""
    drop = ("JUPYTER_CONFIG_PATH", "JUPYTER_CONFIG_DIR", *THREAD_VARS)
    run = subprocess.run(
        command,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if k not in drop} | env,
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def start_env(*start: str, cwd: Path = REPO, **env: str) -> dict[str, str]:
    """The environment that ``binder/start`` gives its command."""
    out = clean_run(*(start or [START]), "env", "-0", cwd=cwd, **env)
    return dict(line.split("=", 1) for line in out.split("\0") if "=" in line)


def test_start_caps_threads_and_puts_the_binder_config_first(tmp_path):
    env = start_env()
    assert env["JUPYTER_CONFIG_PATH"] == str(CONFIG)
    assert all(env[v].isdigit() and int(env[v]) >= 1 for v in THREAD_VARS), env
    # Values set by the user or the host win; the binder config goes in front of theirs.
    theirs = start_env(JUPYTER_CONFIG_PATH="/opt/conf", OMP_NUM_THREADS="7")
    assert theirs["JUPYTER_CONFIG_PATH"] == f"{CONFIG}:/opt/conf" and theirs["OMP_NUM_THREADS"] == "7"
    # Found from the script's own place, whatever the working directory and however it is called.
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder" / "start").write_bytes(START.read_bytes())
    moved = start_env("bash", "binder/start", cwd=tmp_path)
    assert moved["JUPYTER_CONFIG_PATH"] == str(tmp_path / "binder" / "jupyter")


def show_config(*command: str | Path) -> str:
    # An empty JUPYTER_CONFIG_DIR: the user's own config stays out.
    return clean_run(*command, JUPYTER, "server", "--show-config", JUPYTER_CONFIG_DIR="/nonexistent-jupyter")


def test_binder_config_sets_the_manager_and_closing_a_tab_shuts_its_kernel_down():
    overrides = (CONFIG / "labconfig" / "default_setting_overrides.json").read_text()
    assert json.loads(overrides)["@jupyterlab/notebook-extension:tracker"] == {"kernelShutdown": True}
    # The server that binder/start runs uses the manager; `make lab`'s does not.
    assert "kernel_manager_class = <class 'one_kernel.OneKernelManager'>" in show_config(START)
    assert "OneKernelManager" not in show_config()
