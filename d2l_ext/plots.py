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


def resnext_cost_view(c_i: int, c_o: int, groups: int, bot_mul: float):
    """What the cost explorer shows: `d2l_ext.measure.resnext_cost` as a table (parameters, FLOPs
    relative to the plain 3x3 convolution, MFLOPs), displayed and returned; or, for numbers the block
    refuses, the reason, printed, and None."""
    import pandas as pd
    from IPython.display import display

    from d2l_ext.measure import resnext_cost

    try:
        rows = resnext_cost(c_i, c_o, groups, bot_mul)
    except ValueError as e:
        print(f"Refused: {e}")
        return None
    table = pd.DataFrame(rows).set_index("module").rename_axis(None)
    table = table.assign(MFLOPs=table.flops / 1e6).drop(columns="flops").round(3)
    # interactive() shows only what its function displays, so display here, on every change.
    display(table)
    return table


__all__ += ["resnext_cost_view"]

# -- 04 · DenseNet --------------------------------------------------------------------------------
