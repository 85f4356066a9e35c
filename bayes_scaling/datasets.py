"""Synthetic runs corpus drawn from known parameters (the built-in demo and recovery tests).

The package ships no third-party data. The synthetic corpus mimics public scaling suites:
families of 4-6 model sizes, each trained to a family-wide token budget with ~30 logged
checkpoints, per-run seed offsets and observation noise, and family parameters drawn from
a population centred on Besiroglu et al. 2024 (E 1.82, A 482, B 2085, alpha 0.35, beta 0.37).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .laws import PARAM_NAMES, REFERENCE_PARAMS, REFERENCE_TOKENS, centre, from_raw

#: Population of family parameters (centred units, see bayes_scaling.laws).
POPULATION_MEAN = dict(
    zip(PARAM_NAMES, (np.log(1.82), *from_raw(np.log(482.0), np.log(2085.0), 0.35, 0.37), 0.35, 0.37))
)
POPULATION_SD = {"log_e": 0.15, "log_a": 0.3, "log_b": 0.3, "alpha": 0.05, "beta": 0.05}
#: Correlations the paper reports in raw units show up as log_a ~ alpha and log_b ~ beta.
POPULATION_CORR = {("log_a", "alpha"): 0.5, ("log_b", "beta"): 0.5, ("log_a", "log_b"): 0.3}
SIGMA_RUN = 0.01  # sd of a run's log-loss offset (seed-to-seed spread, ~1%)
SIGMA_OBS = 0.005  # sd of checkpoint noise on log loss


def population_covariance() -> np.ndarray:
    """Covariance of theta = (log_e, log_a, log_b, alpha, beta) across families."""
    corr = np.eye(len(PARAM_NAMES))
    for (a, b), r in POPULATION_CORR.items():
        i, j = PARAM_NAMES.index(a), PARAM_NAMES.index(b)
        corr[i, j] = corr[j, i] = r
    sd = np.array([POPULATION_SD[p] for p in PARAM_NAMES])
    return corr * np.outer(sd, sd)


def synthetic(
    n_families: int = 40,
    seed: int = 0,
    n_checkpoints: int = 30,
    sizes_per_family: tuple[int, int] = (4, 6),
    sigma_run: float = SIGMA_RUN,
    sigma_obs: float = SIGMA_OBS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate a runs table from known scaling-law parameters.

    Parameters
    ----------
    n_families : int
        Number of families.
    seed : int
        Seed of the NumPy generator; same seed, same corpus.
    n_checkpoints : int
        Log-spaced checkpoints per run, from 2e9 tokens to the family's budget.
    sizes_per_family : (int, int)
        Inclusive range of the number of model sizes per family.
    sigma_run, sigma_obs : float
        Sd of run offsets and of checkpoint noise, both on natural-log loss.

    Returns
    -------
    runs : DataFrame
        The runs table (schema of ``bayes_scaling.data``) with an extra column
        ``true_loss``: the noise-free loss of that run (its run offset included).
    truth : DataFrame
        One row per family: true ``log_e, log_a, log_b, alpha, beta`` (centred units),
        ``max_tokens``; ``truth.attrs`` holds the population mean, covariance,
        ``sigma_run`` and ``sigma_obs``.
    """
    if n_families < 1:
        raise ValueError(f"n_families must be >= 1, got {n_families}")
    rng = np.random.default_rng(seed)
    mean = np.array([POPULATION_MEAN[p] for p in PARAM_NAMES])
    cov = population_covariance()
    rows, truth = [], []
    for f in range(n_families):
        family = f"synth-{f:02d}"
        theta = rng.multivariate_normal(mean, cov)
        theta[3:] = np.clip(theta[3:], 0.15, None)  # keep exponents physically sensible
        n_sizes = int(rng.integers(sizes_per_family[0], sizes_per_family[1] + 1))
        smallest = 10 ** rng.uniform(7.5, 8.3)
        sizes = smallest * 3.0 ** np.arange(n_sizes)
        max_tokens = 10 ** rng.uniform(11.0, 11.7)
        truth.append({"family": family, **dict(zip(PARAM_NAMES, theta)), "max_tokens": max_tokens})
        tokens = np.geomspace(2e9, max_tokens, n_checkpoints)
        for n_params in sizes:
            offset = rng.normal(0.0, sigma_run)
            x_n, x_d = centre(np.full_like(tokens, n_params), tokens)
            log_true = np.logaddexp.reduce(
                [np.full_like(tokens, theta[0]), theta[1] - theta[3] * x_n, theta[2] - theta[4] * x_d]
            ) + offset
            loss = np.exp(log_true + rng.normal(0.0, sigma_obs, len(tokens)))
            model = f"{family}-{n_params / 1e6:.0f}m"
            rows.append(
                pd.DataFrame(
                    {
                        "family": family,
                        "model": model,
                        "arch": "dec",
                        "seed": 0,
                        "num_params": float(round(n_params)),
                        "tokens": tokens,
                        "flops": 6.0 * round(n_params) * tokens,
                        "loss": loss,
                        "metric": "train_loss",
                        "eval_set": "train",
                        "is_primary": True,
                        "true_loss": np.exp(log_true),
                    }
                )
            )
    runs = pd.concat(rows, ignore_index=True)
    truth_df = pd.DataFrame(truth).set_index("family")
    truth_df.attrs = {
        "population_mean": dict(POPULATION_MEAN),
        "population_cov": cov.tolist(),
        "sigma_run": sigma_run,
        "sigma_obs": sigma_obs,
        "reference_params": REFERENCE_PARAMS,
        "reference_tokens": REFERENCE_TOKENS,
    }
    return runs, truth_df
