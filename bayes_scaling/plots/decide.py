"""Plots of decision results (:mod:`bayes_scaling.decide`): take results, return Axes.

Nothing here samples or computes posterior quantities beyond reading the result objects,
and nothing calls ``show()``.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

_CHOICE_STYLE = {
    "expected_loss": ("tab:blue", "-"),
    "plug_in": ("tab:gray", "--"),
    "median_of_optima": ("tab:green", ":"),
}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    return ax


def isoflop_bands(iso, ax=None, *, color="tab:blue", label=None, show_choices=True):
    """Loss vs N along one isoFLOP line: median, 50% and 90% bands, and the chosen N.

    Parameters
    ----------
    iso : bayes_scaling.decide.IsoFlop
        Result of :func:`bayes_scaling.decide.isoflop`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on (a new figure when omitted).
    show_choices : bool
        Mark the expected-loss, quantile, plug-in and median-of-optima choices of N.
    """
    ax = _axes(ax)
    t = iso.table
    n = t["num_params"].to_numpy()
    ax.fill_between(n, t["q05"], t["q95"], color=color, alpha=0.15, lw=0, label="90% band")
    ax.fill_between(n, t["q25"], t["q75"], color=color, alpha=0.3, lw=0, label="50% band")
    ax.plot(n, t["median"], color=color, lw=1.5, label=label or "median loss")
    if show_choices:
        for _, row in iso.choices.iterrows():
            c, ls = _CHOICE_STYLE.get(row["rule"], ("tab:red", "-."))
            ax.axvline(row["num_params"], color=c, ls=ls, lw=1, label=f"{row['rule']}: N={row['num_params']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("parameters N (at fixed C)")
    ax.set_ylabel("loss (nats)")
    ax.set_title(f"isoFLOP C = {iso.flops:.3g} FLOPs")
    ax.legend(fontsize="small")
    return ax


def frontier(allocation, quantity="num_params", ax=None, *, color="tab:blue", label=None):
    """Compute-optimal ``quantity`` (N*, D*, D*/N* or loss) vs budget C with 50%/90% bands.

    Parameters
    ----------
    allocation : bayes_scaling.decide.Allocation
        Result of :func:`bayes_scaling.decide.compute_optimal` over several budgets.
    quantity : str
        One of ``num_params``, ``tokens``, ``tokens_per_param``, ``loss``.
    """
    ax = _axes(ax)
    t = allocation.table[allocation.table["quantity"] == quantity].sort_values("flops")
    if t.empty:
        raise ValueError(f"quantity must be one of {sorted(allocation.table['quantity'].unique())}, got {quantity!r}")
    c = t["flops"].to_numpy()
    ax.fill_between(c, t["q05"], t["q95"], color=color, alpha=0.15, lw=0)
    ax.fill_between(c, t["q25"], t["q75"], color=color, alpha=0.3, lw=0)
    ax.plot(c, t["median"], color=color, lw=1.5, marker="o", ms=3, label=label or f"{quantity} (median, 50%, 90%)")
    ax.set_xscale("log")
    if quantity != "loss":
        ax.set_yscale("log")
    names = {"num_params": "compute-optimal N*", "tokens": "compute-optimal D*", "tokens_per_param": "D*/N*", "loss": "loss at optimum (nats)"}
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel(names.get(quantity, quantity))
    ax.legend(fontsize="small")
    return ax


def p_a_better(comparison, ax=None, *, label_a="A", label_b="B", color="tab:purple"):
    """P(L_A < L_B) vs scale (FLOPs), with the 1/2 line and the flip scale if any.

    Parameters
    ----------
    comparison : bayes_scaling.decide.Comparison
        Result of :func:`bayes_scaling.decide.compare` over several scales.
    """
    ax = _axes(ax)
    t = comparison.table
    c = t["flops"].to_numpy()
    ax.plot(c, t["p_a_better"], color=color, marker="o", ms=3, label=f"P({label_a} better than {label_b})")
    ax.axhline(0.5, color="gray", lw=0.8, ls="--")
    if not comparison.flip.empty:
        flip = comparison.flip.iloc[0]
        if np.isfinite(flip["crossing_flops"]):
            ax.axvline(flip["crossing_flops"], color="tab:red", lw=1, ls=":", label=f"P crosses 1/2 at {flip['crossing_flops']:.3g}")
        if flip["p_flip"] > 0 and np.isfinite(flip["flip_flops_q05"]):
            ax.axvspan(flip["flip_flops_q05"], flip["flip_flops_q95"], color="tab:red", alpha=0.08,
                       label=f"flip scale 90% (P(flip)={flip['p_flip']:.2f})")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("probability")
    ax.legend(fontsize="small")
    return ax


def rel_diff_bands(comparison, ax=None, *, label_a="A", label_b="B", color="tab:purple"):
    """Relative difference L_A / L_B - 1 vs scale with 50%/90% bands (below 0: A better)."""
    ax = _axes(ax)
    t = comparison.table
    c = t["flops"].to_numpy()
    ax.fill_between(c, t["rel_diff_q05"], t["rel_diff_q95"], color=color, alpha=0.15, lw=0)
    ax.fill_between(c, t["rel_diff_q25"], t["rel_diff_q75"], color=color, alpha=0.3, lw=0)
    ax.plot(c, t["rel_diff_median"], color=color, lw=1.5, label=f"L_{label_a} / L_{label_b} - 1")
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("relative loss difference")
    ax.legend(fontsize="small")
    return ax


def required_flops(budget, ax=None, *, color="tab:blue"):
    """Posterior CDF of the budget each draw needs to reach the target, and the chosen C.

    Parameters
    ----------
    budget : bayes_scaling.decide.BudgetForTarget
        Result of :func:`bayes_scaling.decide.budget_for_target` (closed-form path).
    """
    ax = _axes(ax)
    req = np.sort(budget.required_flops.values.reshape(-1))
    finite = np.isfinite(req)
    cdf = np.arange(1, req.size + 1) / req.size
    ax.step(req[finite], cdf[finite], where="post", color=color, label="P(optimal loss <= target) at C")
    ax.axhline(budget.prob, color="gray", lw=0.8, ls="--")
    ax.axvline(budget.flops, color="tab:red", lw=1, label=f"C = {budget.flops:.3g} FLOPs (P >= {budget.prob:g})")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("probability")
    ax.set_title(f"budget to reach loss {budget.target_loss:g}")
    ax.legend(fontsize="small")
    return ax


__all__ = ["frontier", "isoflop_bands", "p_a_better", "rel_diff_bands", "required_flops"]


def plan_widths(result, ax=None, *, annotate: int = 3, color="tab:blue"):
    """Expected width of the target's interval against cumulative pilot compute, per candidate.

    Parameters
    ----------
    result : bayes_scaling.plan.NextRunResult
        Result of :func:`bayes_scaling.plan.next_run`.
    ax : matplotlib.axes.Axes, optional
    annotate : int
        Label the best ``annotate`` candidates (by width reduction per FLOP).
    """
    ax = _axes(ax)
    t = result.table
    x = t["cumulative_flops"].to_numpy()
    y = t["expected_width"].to_numpy()
    low = t["ess_low"].to_numpy(bool)
    ax.vlines(x, t["width_q10"], t["width_q90"], color=color, alpha=0.3, lw=1)
    ax.scatter(x[~low], y[~low], color=color, s=25, label="candidate (expected width)")
    if low.any():
        ax.scatter(x[low], y[low], facecolors="none", edgecolors=color, s=25, label="candidate, low ESS")
    now = max(result.existing_flops, np.min(x) * 1e-3)
    ax.scatter([now], [result.width_now], marker="*", color="black", s=120, zorder=3, label="now")
    for _, row in t.head(annotate).iterrows():
        ax.annotate(f"#{int(row['rank'])} {row['label']}", (row["cumulative_flops"], row["expected_width"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("cumulative pilot compute (FLOPs)")
    ax.set_ylabel(f"expected {round(result.level * 100)}% interval width / median")
    n, d = result.target
    ax.set_title(f"target N={n:.3g}, D={d:.3g}", fontsize=9)
    ax.legend(fontsize=7)
    return ax
