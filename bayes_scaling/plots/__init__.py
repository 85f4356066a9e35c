"""Plots: each takes results (Fit, predictions, tables) and an optional ``ax``, returns ``Axes``.

Nothing here samples, prints or calls ``show()``.
"""

from .curves import grid_axes, plot_loss_curves

__all__ = ["grid_axes", "plot_loss_curves"]
