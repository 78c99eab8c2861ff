"""d2l_ext: the library of the modern-CNNs notebook bundle.

Hand-written helpers (data, presets, training) are imported here; the measuring tools shared by the
notebooks live in ``d2l_ext.measure``, each topic's own in ``d2l_ext.<topic>_tools``; the topic modules
(``batch_norm``, ``resnet``, ``resnext``, ``densenet``) are generated from the notebooks'
``#@save`` cells and imported by name, e.g. ``from d2l_ext.resnet import ResNet18``.
"""

try:
    from d2l import torch as d2l  # noqa: F401  (checked here so the error says what to do)
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "d2l_ext needs the book's package d2l. Install it without its exact pins, which break "
        "Python 3.12 and downgrade numpy:  pip install --no-deps d2l==1.0.3"
    ) from e

from d2l_ext.data import MEAN, STD, DataError, FashionMNIST, find_fashion_mnist
from d2l_ext.presets import PRESETS, Experiment, current_preset, experiment
from d2l_ext.runs import fit
from d2l_ext.training import Callback, StepLosses, Trainer, evaluate, set_seed

__version__ = "0.1.0"

__all__ = [
    "Callback",
    "MEAN",
    "PRESETS",
    "STD",
    "StepLosses",
    "DataError",
    "Experiment",
    "FashionMNIST",
    "Trainer",
    "__version__",
    "current_preset",
    "evaluate",
    "experiment",
    "find_fashion_mnist",
    "fit",
    "set_seed",
]
