"""Held-out coverage when the law is wrong (issue 18): a broken power law in N.

Each synthetic family's loss follows ``E + A N^-alpha (1 + N / N_b)^(alpha - alpha2) + B D^-beta``:
exponent alpha below the break N_b, alpha2 above it. Chinchilla's form cannot bend, so a fit
on the small sizes extrapolates the wrong slope to the target. The break sits between the
largest training size and the target; alpha2 is drawn on both sides of alpha (the law may
steepen or flatten). Fitted the user's way (``bs.fit(train, population="public")``,
``predict_loss(kind="new_run", observation_noise=True)``), the 90% intervals of the target's
final loss must cover it about as often as a calibrated interval would over as many
families by chance (``backtest.chance_range``, 95%): the size discrepancy has to widen
them with the distance extrapolated, or the misspecification goes unnoticed.

NUTS budget: 16 families fitted one after another at the sampler defaults (slow).
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import bayes_scaling as bs
from bayes_scaling import backtest as bt

SIZES = np.array([1e8, 2e8, 4e8, 8e8])  # training sizes (k = 4)
TARGET = 8e9
N_FAMILIES = 16


def broken_law_runs(n_families: int = N_FAMILIES, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training runs (4 sizes, 10 checkpoints each, 0.3% noise, 0.5% run offsets) and each
    family's target run (final checkpoint) from a broken power law in N."""
    rng = np.random.default_rng(seed)
    train, target = [], []
    for f in range(n_families):
        e, a, b = rng.uniform(1.6, 2.0), rng.uniform(300, 600), rng.uniform(300, 600)
        alpha, beta = rng.uniform(0.28, 0.38), rng.uniform(0.26, 0.34)
        alpha2 = alpha * rng.uniform(0.6, 1.4)
        n_break = np.exp(rng.uniform(np.log(1e9), np.log(4e9)))

        def loss(n, d):
            return e + a * n**-alpha * (1 + n / n_break) ** (alpha - alpha2) + b * d**-beta

        for size in [*SIZES, TARGET]:
            tokens = np.geomspace(1e10, 5e10 * np.sqrt(size / 1e8), 10)  # all past the default 1e10 cut
            offset = np.exp(0.005 * rng.standard_normal())
            observed = loss(size, tokens) * offset * np.exp(0.003 * rng.standard_normal(len(tokens)))
            frame = pd.DataFrame({"family": f"broken{f:02d}", "model": f"broken{f:02d}-{size:.0e}", "num_params": size, "tokens": tokens, "loss": observed})
            if size == TARGET:
                target.append(frame.iloc[[-1]])  # the final checkpoint
            else:
                train.append(frame)
    return pd.concat(train, ignore_index=True), pd.concat(target, ignore_index=True)


@pytest.mark.slow
def test_new_run_intervals_cover_a_broken_power_law():
    """Measured 2026-12-01: 12 of 16 targets covered (75%, the bottom of the chance range
    75-100%) with the population's size discrepancy from its members' extrapolation checks;
    7 of 16 (44%) with the in-sample one it replaced."""
    train, target = broken_law_runs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = bs.fit(train, population="public", seed=0)
    covered = []
    for _, row in target.iterrows():
        draws = bs.predict_loss(fit, row["family"], row["num_params"], row["tokens"], kind="new_run", observation_noise=True, seed=1)
        low, high = np.quantile(draws.values.reshape(-1), [0.05, 0.95])
        covered.append(low <= row["loss"] <= high)
    low, high = bt.chance_range(N_FAMILIES)
    assert low <= np.mean(covered) <= high, (np.mean(covered), (low, high))
