"""Loss curves along training with posterior predictive bands."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_loss_curves(
    observed: pd.DataFrame,
    predicted: pd.DataFrame | None = None,
    *,
    held_out: pd.DataFrame | None = None,
    ax: plt.Axes | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Observed loss vs tokens per run, with predictive bands.

    Parameters
    ----------
    observed : DataFrame
        Checkpoints used for fitting: columns ``model``, ``tokens``, ``loss``.
    predicted : DataFrame, optional
        Output of :func:`bayes_scaling.predict.summarize` (``tokens``, ``median``, ``q05``,
        ``q25``, ``q75``, ``q95``, optionally ``num_params``): drawn as a median line with 50% and 90% bands,
        one band per distinct ``num_params``.
    held_out : DataFrame, optional
        Checkpoints not used for fitting (``tokens``, ``loss``), drawn as open markers.
    ax : Axes, optional
    title : str, optional

    Returns
    -------
    Axes
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("viridis")
    models = list(dict.fromkeys(observed["model"]))
    for i, (model, group) in enumerate(observed.groupby("model", sort=False)):
        group = group.sort_values("tokens")
        ax.plot(group["tokens"], group["loss"], ".", ms=3, color=colours(i / max(len(models), 1)), label=str(model))
    if predicted is not None and len(predicted):
        groups = predicted.groupby("num_params") if "num_params" in predicted else [(None, predicted)]
        for _, pred in groups:
            pred = pred.sort_values("tokens")
            ax.fill_between(pred["tokens"], pred["q05"], pred["q95"], color="tab:red", alpha=0.15, lw=0)
            ax.fill_between(pred["tokens"], pred["q25"], pred["q75"], color="tab:red", alpha=0.3, lw=0)
            ax.plot(pred["tokens"], pred["median"], color="tab:red", lw=1.2)
        ax.plot([], [], color="tab:red", lw=6, alpha=0.3, label="predicted (50%/90%)")
    if held_out is not None and len(held_out):
        ax.plot(held_out["tokens"], held_out["loss"], "o", mfc="none", mec="black", ms=4, label="held out")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats)")
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.2g"))
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="upper right")
    return ax


def grid_axes(n: int, ncols: int = 3, size: tuple[float, float] = (4.0, 3.0)):
    """A figure with ``n`` axes in a grid (unused ones hidden); returns (fig, flat axes)."""
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes.ravel()[:n]
