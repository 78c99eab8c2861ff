"""One kernel at a time: the Jupyter server's kernel manager on Binder.

A Binder session has 1-2 GB of memory for the server and every kernel together, and a kernel that
has run a notebook of this lecture holds about 1 GB. JupyterLab keeps a notebook's kernel running
when its tab closes, so a student who opens the notebooks one after another would hold several
and be killed. This manager starts a new kernel first and, once it runs, shuts down every other one
(one log line each, naming the kernel and the notebook it was started for); a start that fails (an
unknown kernel name, a process that does not launch) shuts nothing down and raises its error, so
the running notebook keeps its kernel. Reconnecting to a running kernel and restarting one shut
nothing down. A notebook whose kernel was shut down shows no kernel; running it again starts a
fresh one (and shuts down the other), and its trainings replay from the run cache.

``binder/jupyter/jupyter_server_config.py`` makes it the server's kernel manager, in the Jupyter
config folder that ``binder/start`` puts on ``JUPYTER_CONFIG_PATH``: on Binder only, never for
``make lab``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class OneKernelManager(AsyncMappingKernelManager):
    """A kernel manager that keeps at most one kernel running: a started kernel shuts down the others."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._one_at_a_time = asyncio.Lock()  # two starts at once must not both survive
        self._started_for: dict[str, str] = {}  # kernel id -> the path it was started for

    async def _async_start_kernel(  # type: ignore[override]
        self, *, kernel_id: str | None = None, path: str | None = None, **kwargs: Any
    ) -> str:
        if kernel_id is not None and kernel_id in self:  # a reconnect: nothing starts
            return await super()._async_start_kernel(kernel_id=kernel_id, path=path, **kwargs)
        async with self._one_at_a_time:
            others = list(self.list_kernel_ids())
            wanted = self._notebook(path, kwargs)
            # Start first: a failed start raises here, before the running kernels (and the state of
            # their notebooks) are touched. Two kernels then live until the others are shut down, and
            # the new one is small: a fresh python3 kernel that has run nothing held 51.5 MiB resident
            # (psutil's RSS once ready and idle; ipykernel 7.4, Python 3.11, this repository's venv),
            # against about 1 GB for a kernel that has run a notebook (above).
            new = await super()._async_start_kernel(kernel_id=kernel_id, path=path, **kwargs)
            self._started_for[new] = wanted
            for other in others:
                self.log.info(
                    "One kernel at a time: shutting down kernel %s (%s) to start one for %s",
                    other,
                    self._started_for.get(other, "no notebook"),
                    wanted,
                )
            results = await asyncio.gather(
                *(self.shutdown_kernel(other) for other in others), return_exceptions=True
            )
            for other, result in zip(others, results):
                if isinstance(result, Exception) and other in self:  # e.g. it died meanwhile
                    self.log.warning("Could not shut down kernel %s: %r", other, result)
            for gone in set(self._started_for) - set(self.list_kernel_ids()):
                del self._started_for[gone]
            return new

    def _notebook(self, path: str | None, kwargs: dict[str, Any]) -> str:
        """The notebook a kernel is started for: the session's file (the server puts it in the
        kernel's environment as JPY_SESSION_NAME), relative to the server's root, else the folder."""
        name = (kwargs.get("env") or {}).get("JPY_SESSION_NAME") or path or ""
        if os.path.isabs(name) and not os.path.relpath(name, self.root_dir).startswith(".."):
            name = os.path.relpath(name, self.root_dir)
        return name or "no notebook"

    start_kernel = _async_start_kernel  # the name the server calls (the base class aliases its own)
