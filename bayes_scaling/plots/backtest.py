"""Back-test plots: ARE vs k, calibration, and a fan chart per family.

Each takes results of :mod:`bayes_scaling.backtest` (the tidy rows, or the dict of
:func:`bayes_scaling.backtest.fan_data`) and an optional ``ax``; returns the Axes.
"""

from __future__ import annotations

import numpy as np

from ..backtest import ESTIMATORS, LEVELS, aggregate

_COLORS = {
    "classic": "tab:gray",
    "classic_huber": "tab:brown",
    "bayes_independent": "tab:blue",
    "bayes_hierarchical": "tab:red",
}


def _axes(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def plot_are_vs_k(results, *, min_tokens=1e10, fraction=1.0, statistic="are_median", ax=None):
    """Macro ARE (median over families, or ``statistic="are_capped_mean"``) vs k, one line
    per estimator, log y axis (%)."""
    ax = _axes(ax)
    sub = results[(results["min_tokens"] == min_tokens) & (results["fraction"] == fraction)]
    if len(sub):
        agg = aggregate(sub, ("estimator", "k"))
        for est in ESTIMATORS:
            a = agg[agg["estimator"] == est].sort_values("k")
            if len(a):
                y = 100 * np.minimum(a[statistic].to_numpy(float), 1e6)
                ax.plot(a["k"], y, "o-", color=_COLORS.get(est), label=est)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("k (smallest sizes used for training)")
    ax.set_ylabel(f"ARE {'median' if statistic == 'are_median' else 'capped mean'} over families (%)")
    ax.set_title(f"token cut {min_tokens:g}, fraction {fraction:g}")
    return ax


def plot_calibration(results, *, min_tokens=1e10, fraction=1.0, ax=None):
    """Empirical vs nominal coverage of central intervals, per estimator with intervals."""
    ax = _axes(ax)
    sub = results[(results["min_tokens"] == min_tokens) & (results["fraction"] == fraction)]
    ax.plot([0, 1], [0, 1], ":", color="black", lw=1, label="ideal")
    if len(sub):
        agg = aggregate(sub, ("estimator",))
        for _, row in agg.iterrows():
            cov = [row.get(f"cov_{int(round(100 * level))}", np.nan) for level in LEVELS]
            if np.all(np.isnan(cov)):
                continue
            ax.plot(LEVELS, cov, "o-", color=_COLORS.get(row["estimator"]), label=row["estimator"])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage (mean over families)")
    ax.set_title(f"calibration, token cut {min_tokens:g}")
    ax.legend(fontsize=8)
    return ax


def plot_fan(fan: dict, *, ax=None):
    """Fan chart of one family: training points, target points, and each estimator's
    median with 50% / 90% bands along the target run (from ``backtest.fan_data``)."""
    ax = _axes(ax)
    train, targets, bands = fan["train"], fan["targets"], fan["bands"]
    ax.scatter(train["tokens"], train["loss"], s=8, color="black", alpha=0.5, label="training")
    ax.scatter(targets["tokens"], targets["loss"], s=14, color="tab:green", marker="x", label="target")
    for est, b in bands.groupby("estimator", sort=False):
        color = _COLORS.get(est)
        ax.plot(b["tokens"], b["median"], color=color, label=est)
        if "q05" in b and b["q05"].notna().any():
            ax.fill_between(b["tokens"], b["q05"], b["q95"], color=color, alpha=0.12)
            ax.fill_between(b["tokens"], b["q25"], b["q75"], color=color, alpha=0.25)
    ax.set_xscale("log")
    lo = min(train["loss"].min(), targets["loss"].min())
    hi = max(train["loss"].max(), targets["loss"].max())
    ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats)")
    ax.set_title(f"{fan['family']}, k = {fan['k']}")
    ax.legend(fontsize=7)
    return ax
