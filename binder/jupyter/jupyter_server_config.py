# The Jupyter server's configuration on Binder: binder/start puts this folder on
# JUPYTER_CONFIG_PATH, so `make lab` and other Jupyter installations never read it.
# One kernel at a time (binder/one_kernel.py): a Binder session's 1-2 GB hold one notebook's kernel.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # binder/, for one_kernel

from one_kernel import OneKernelManager  # noqa: E402

c = get_config()  # noqa: F821 (given by the Jupyter config loader)
c.ServerApp.kernel_manager_class = OneKernelManager
