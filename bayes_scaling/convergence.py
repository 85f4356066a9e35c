"""Convergence numbers of a posterior (r_hat, ESS, divergences), computed with arviz.

Kept small and at the bottom of the stack: inference uses it to warn after every fit, and
``bayes_scaling.diagnostics`` builds the full report on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import arviz as az
import numpy as np

#: Thresholds of the usual rules (Vehtari et al. 2021): r_hat <= 1.01, ESS >= 100 per chain.
MAX_R_HAT = 1.01
#: Largest r_hat of a small fit (a back-test cell, a population member) counted as
#: mixed: above it the chains sit in different places, not merely in a short run.
MIXED_RHAT = 1.05
MIN_ESS_PER_CHAIN = 100

#: Population parameters of a hierarchical fit.
POPULATION_VARS = ("mu", "tau")
#: Per-family parameters (sigma_run is 0, and skipped, where runs have one checkpoint each;
#: sigma_size exists in fits under a population, where it sets how far a prediction spreads).
FAMILY_VARS = ("theta", "sigma_obs", "sigma_run", "sigma_size")


def format_r_hat(value: float) -> str:
    """r_hat as text: 3 decimals, more where 3 would print a failing value as the threshold
    itself (1.0104 as "1.010" beside "needs <= 1.01"), 2 significant digits when huge."""
    if not value < 100:
        return f"{value:.1e}"
    for digits in (3, 4, 5, 6):
        text = f"{value:.{digits}f}"
        if not (value > MAX_R_HAT and float(text) <= MAX_R_HAT):
            break
    return text


@dataclass(frozen=True)
class Convergence:
    """Worst-case convergence numbers over the checked variables."""

    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    n_chains: int
    n_draws: int
    checked: tuple[str, ...]

    @property
    def min_ess(self) -> float:
        return MIN_ESS_PER_CHAIN * self.n_chains

    def problems(self) -> list[str]:
        """Human-readable list of failed checks; empty when all pass."""
        out = []
        if self.n_chains > 1 and not self.max_r_hat <= MAX_R_HAT:
            out.append(f"max r_hat {format_r_hat(self.max_r_hat)} > {MAX_R_HAT}")
        if not self.min_ess_bulk >= self.min_ess:
            out.append(f"min bulk ESS {self.min_ess_bulk:.0f} < {self.min_ess:.0f}")
        if not self.min_ess_tail >= self.min_ess:
            out.append(f"min tail ESS {self.min_ess_tail:.0f} < {self.min_ess:.0f}")
        if self.divergences:
            out.append(f"{self.divergences} divergent transitions")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()


def check_convergence(idata: az.InferenceData, var_names=None) -> Convergence:
    """Worst r_hat and ESS over ``var_names`` (default: population and per-family parameters).

    Parameters
    ----------
    idata : InferenceData
        Must have a ``posterior`` group; divergences are read from ``sample_stats`` when present.
    var_names : sequence of str, optional
        Variables to check; those absent from the posterior are skipped.
    """
    post = idata.posterior
    if var_names is None:
        var_names = [*POPULATION_VARS, *FAMILY_VARS]
    names = tuple(v for v in var_names if v in post.data_vars)
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    if not names:
        raise ValueError(f"none of {list(var_names)} is in the posterior")
    sub = post[list(names)]
    r_hat = _max_r_hat(sub)
    ess_bulk, ess_tail = _min_ess(sub, "bulk"), _min_ess(sub, "tail")
    divergences = 0
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        divergences = int(idata.sample_stats["diverging"].sum())
    return Convergence(r_hat, ess_bulk, ess_tail, divergences, n_chains, n_draws, names)


def max_r_hat(draws: Mapping[str, np.ndarray]) -> float:
    """Worst r_hat over arrays shaped ``(chains, draws, ...)``: the r_hat of
    :func:`check_convergence` (arviz: rank-normalised and folded split r_hat), for draws
    held outside an InferenceData (a cell fit's). NaN with one chain."""
    return _max_r_hat(az.convert_to_dataset({name: np.asarray(values) for name, values in draws.items()}))


def min_ess(draws: Mapping[str, np.ndarray]) -> float:
    """Smallest bulk or tail ESS over arrays shaped ``(chains, draws, ...)``: what
    :func:`check_convergence` holds against :data:`MIN_ESS_PER_CHAIN` per chain, for draws
    held outside an InferenceData (a cell fit's). NaN for stuck chains."""
    dataset = az.convert_to_dataset({name: np.asarray(values) for name, values in draws.items()})
    return float(np.minimum(_min_ess(dataset, "bulk"), _min_ess(dataset, "tail")))  # NaN if either is


def _min_ess(dataset, method: str) -> float:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # stuck chains: ESS is then nan
        return _worst(az.ess(dataset, method=method), np.nanmin)


def _max_r_hat(dataset) -> float:
    if dataset.sizes["chain"] < 2:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # stuck chains divide by zero; r_hat is then inf/nan
        return _worst(az.rhat(dataset), np.nanmax)


def _worst(dataset, reduce) -> float:
    values = [np.asarray(dataset[v]).ravel() for v in dataset.data_vars]
    return float(reduce(np.concatenate(values)))
