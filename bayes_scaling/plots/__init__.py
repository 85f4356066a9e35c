"""Plots: each takes results (Fit, predictions, tables) and an optional ``ax``, returns ``Axes``.

Nothing here samples, prints or calls ``show()``.
"""

from .backtest import plot_are_vs_k, plot_calibration, plot_fan
from .curves import grid_axes, plot_loss_curves
from .decide import frontier, isoflop_bands, p_a_better, plan_widths, rel_diff_bands, required_flops
from .diagnostics import plot_family_parameters, plot_family_ppc, plot_loo_pit, plot_pareto_k, plot_ppc_grid, plot_rank

__all__ = [
    "frontier",
    "grid_axes",
    "isoflop_bands",
    "p_a_better",
    "plan_widths",
    "plot_are_vs_k",
    "plot_calibration",
    "plot_family_parameters",
    "plot_family_ppc",
    "plot_fan",
    "plot_loo_pit",
    "plot_loss_curves",
    "plot_pareto_k",
    "plot_ppc_grid",
    "plot_rank",
    "rel_diff_bands",
    "required_flops",
]
