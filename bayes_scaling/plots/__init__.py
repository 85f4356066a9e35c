"""Plots: each takes results (Fit, predictions, tables) and an optional ``ax``, returns ``Axes``.

Nothing here samples, prints or calls ``show()``.
"""

from .backtest import plot_are_vs_k, plot_calibration, plot_fan  # noqa: F401
from .curves import grid_axes, plot_loss_curves
from .decide import frontier, isoflop_bands, p_a_better, rel_diff_bands, required_flops  # noqa: F401
from .diagnostics import plot_family_parameters, plot_family_ppc, plot_loo_pit, plot_pareto_k, plot_ppc_grid, plot_rank  # noqa: F401

__all__ = ["grid_axes", "plot_loss_curves"]
