"""Figures and widget views of the notebooks: hand-written, tested, kept apart from the lecture's code.

The widget cells in the notebooks stay thin: each calls one function here, which computes with
`d2l_ext.measure` and the topic modules, and draws with matplotlib (through d2l's ``plt``).
Sections follow the lecture's order.
"""

from __future__ import annotations

__all__: list[str] = []

# -- 01 · batch and layer normalization ----------------------------------------------------------

# -- 02 · ResNet ----------------------------------------------------------------------------------

# -- 03 · ResNeXt ---------------------------------------------------------------------------------

# -- 04 · DenseNet --------------------------------------------------------------------------------
