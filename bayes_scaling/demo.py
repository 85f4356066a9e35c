"""The built-in demo: fit a synthetic corpus with each family's largest model held out.

Shows the whole workflow on data with known truth: prepare, fit, predict each held-out
model as a new run of its family, and score the 90% intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .datasets import synthetic
from .inference import Fit, fit
from .predict import predict_loss, summarize

#: Sampler settings of the default demo and of ``--quick``.
#: The demo learns its metric from all chains (``fit(metric_adaptation="pooled")``): 25
#: divergences with it, 289 with NumPyro's per-chain windows, at target acceptance 0.9.
DEMO_SETTINGS = {"n_families": 10, "chains": 4, "warmup": 500, "draws": 800, "metric_adaptation": "pooled"}
QUICK_SETTINGS = {"n_families": 5, "chains": 2, "warmup": 150, "draws": 150}


@dataclass(frozen=True)
class DemoResult:
    """Outputs of :func:`run_demo`.

    Attributes
    ----------
    fit : Fit
    train, held_out : DataFrame
        Runs used for fitting and the held-out largest run of each family.
    table : DataFrame
        One row per family: held-out model, final tokens, observed and true final loss,
        predicted median and 90% interval, whether the observed loss is inside.
    checkpoint_coverage : float
        Share of held-out checkpoints in their last 30% of training inside the 90% interval.
    """

    fit: Fit
    train: pd.DataFrame
    held_out: pd.DataFrame
    table: pd.DataFrame
    checkpoint_coverage: float

    @property
    def coverage(self) -> float:
        """Share of held-out final losses inside their 90% interval."""
        return float(self.table["inside_90"].mean())


def split_largest(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a runs table into (train, held_out): held out = each family's largest-N run(s)."""
    largest = runs.groupby("family")["num_params"].transform("max")
    held = runs["num_params"] == largest
    return runs[~held].reset_index(drop=True), runs[held].reset_index(drop=True)


def run_demo(
    n_families: int = DEMO_SETTINGS["n_families"],
    *,
    chains: int = DEMO_SETTINGS["chains"],
    warmup: int = DEMO_SETTINGS["warmup"],
    draws: int = DEMO_SETTINGS["draws"],
    metric_adaptation: str = DEMO_SETTINGS["metric_adaptation"],
    seed: int = 0,
    progress_bar: bool = False,
) -> DemoResult:
    """Generate, fit and score the synthetic demo (see module docstring)."""
    runs, _ = synthetic(n_families=n_families, seed=seed)
    train, held_out = split_largest(runs)
    result = fit(
        train, chains=chains, warmup=warmup, draws=draws, seed=seed, metric_adaptation=metric_adaptation, progress_bar=progress_bar
    )
    rows, inside = [], []
    for (family, model), run in held_out.groupby(["family", "model"], sort=False):
        late = run[run["tokens"] >= 0.7 * run["tokens"].max()].sort_values("tokens")
        pred = summarize(
            predict_loss(result, family, late["num_params"], late["tokens"], kind="new_run", observation_noise=True, seed=seed)
        )
        hit = (late["loss"].to_numpy() >= pred["q05"].to_numpy()) & (late["loss"].to_numpy() <= pred["q95"].to_numpy())
        inside.append(hit)
        final = late.iloc[-1]
        rows.append(
            {
                "family": family,
                "model": model,
                "num_params": final["num_params"],
                "tokens": final["tokens"],
                "observed": final["loss"],
                "true": final["true_loss"],
                "median": pred["median"].iloc[-1],
                "q05": pred["q05"].iloc[-1],
                "q95": pred["q95"].iloc[-1],
                "inside_90": bool(hit[-1]),
                "abs_rel_error": abs(pred["median"].iloc[-1] - final["loss"]) / final["loss"],
            }
        )
    return DemoResult(result, train, held_out, pd.DataFrame(rows), float(np.concatenate(inside).mean()))
