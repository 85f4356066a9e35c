"""The back-test's estimators: objects behind one interface.

An :class:`Estimator` knows the prior a back-test cell is fitted under (:meth:`~Estimator.prior`)
and turns the cell's training points into a predictor of its targets
(:meth:`~Estimator.fit`). The runner looks them up by name in :data:`REGISTRY` (the name is
what a cell, a result row and the CLI carry) and never asks which one it holds; a new
estimator is a new class and one entry there. A cell's data are a
:class:`~bayes_scaling.backtest.protocol.CellData` and a target a
:class:`~bayes_scaling.backtest.protocol.Target`; this module only reads their fields.

``classic`` and ``classic_huber``: the point fits of :mod:`bayes_scaling.pointfit`; their
90% interval is drawn from the fitted covariance ``N(popt, pcov)`` (parameter uncertainty
only, the naive baseline).

``bayes_independent``: the held-out family alone, no pooling, with the weak priors of the
``chinchilla_independent`` spec (:func:`bayes_scaling.cellfit.independent_prior`), fitted as
the small single-family NUTS model of :func:`bayes_scaling.cellfit.fit_cell`; the target is
predicted as a *new run* of its family (theta from the posterior, a fresh run offset,
observation noise).

``bayes_hierarchical``: exactly what a user runs, ``bs.fit(training runs, population=P)``
then ``predict_loss(kind="new_run", observation_noise=True)``, with P the population
without the family's source group
(:func:`~bayes_scaling.backtest.populations.population_priors`). The population and what a
family borrows from it are described in :mod:`bayes_scaling.population`; the fit under it in
:mod:`bayes_scaling.popfit`. Why not the joint hierarchical model of
:mod:`bayes_scaling.inference`: one fit of the corpus takes many minutes on the shared
2-core machine, and an honest back-test needs one per held-out source group.

The Bayesian point prediction is the posterior-predictive median.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from ..cellfit import SAMPLER_DEFAULTS, TEMPERATURES, FamilyArrays, independent_prior
from ..convergence import MAX_R_HAT, MIN_ESS_PER_CHAIN, MIXED_RHAT, check_convergence
from ..data import Filters
from ..errors import DataError
from ..laws import centre
from ..pointfit import PointFit, fit_classic, fit_classic_huber
from ..popfit import fit_with_population
from ..predict import predict_loss

__all__ = [
    "BAYES_ESTIMATORS",
    "ESTIMATORS",
    "REGISTRY",
    "BayesHierarchical",
    "BayesIndependent",
    "Estimator",
    "FittedCell",
    "PointFitEstimator",
    "public_path_fit",
    "resolve",
]

#: ``predict(target, seed) -> (point, draws or None)``: the point prediction at the target's
#: checkpoints and predictive draws (draws, checkpoints), both in the loss's units.
Predictor = Callable[[object, int], tuple]


@dataclass(frozen=True)
class FittedCell:
    """An estimator fitted to one cell: its predictor and what the fit reports."""

    predict: Predictor
    message: str = ""
    divergences: float = math.nan
    max_rhat: float = math.nan


class Estimator:
    """One way of predicting a cell's targets from its training points.

    Subclasses set :attr:`name` and implement :meth:`fit`; a sampled one sets
    :attr:`bayesian` (its cells carry sampler settings and can be restricted to some k and
    fractions, the costly part of a back-test) and returns its prior from :meth:`prior`.
    """

    name: str = ""
    bayesian: bool = False
    #: Whether :meth:`prior` reads the back-test's populations (they are built only then).
    needs_population: bool = False

    def prior(self, data, populations: dict | None):
        """The prior of a cell of ``data`` (None: the estimator has none).
        ``populations``: ``{min_tokens: {family: prior}}`` from
        :func:`bayes_scaling.backtest.population_priors`, or None."""
        return None

    def fit(self, data, prior, settings: dict, seed: int, posterior=None) -> FittedCell:
        """Fit to ``data``'s training points. ``settings``: the cell's sampler settings;
        ``posterior``: a :class:`~bayes_scaling.cellfit.CellPosterior` of this cell already
        sampled elsewhere (:mod:`bayes_scaling.batched`), for estimators that accept one.
        Raises when the fit fails; the back-test scores that as a failed cell."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class PointFitEstimator(Estimator):
    """A least-squares point fit of :mod:`bayes_scaling.pointfit`, ``fitter(num_params,
    tokens, loss) -> PointFit``; its interval is from the fitted covariance, parameter
    uncertainty only."""

    def __init__(self, name: str, fitter: Callable[..., PointFit]):
        self.name = name
        self.fitter = fitter

    def fit(self, data, prior, settings, seed, posterior=None) -> FittedCell:
        pf = self.fitter(data.train_num_params, data.train_tokens, data.train_loss)
        if not pf.ok:
            raise RuntimeError(pf.message)

        def predict(target, s):
            n = np.full_like(target.tokens, target.num_params)
            with np.errstate(over="ignore", invalid="ignore"):
                return pf.predict(n, target.tokens), pf.draws(n, target.tokens, n_draws=1000, seed=s)

        return FittedCell(predict, message=pf.message)


def _sampler(settings: dict) -> dict:
    """The sampler arguments of :data:`~bayes_scaling.cellfit.SAMPLER_DEFAULTS` from a
    cell's settings, typed."""
    return {k: float(settings[k]) if k == "target_accept" else int(settings[k]) for k in SAMPLER_DEFAULTS}


def _subsample(draws: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` rows of ``draws`` (all when ``n`` is 0), chosen with ``seed``."""
    if 0 < n < len(draws):
        return draws[np.random.default_rng(seed).choice(len(draws), n, replace=False)]
    return draws


class BayesIndependent(Estimator):
    """The family alone, no pooling: the single-family cell model of
    :mod:`bayes_scaling.cellfit` under the weak priors of the ``chinchilla_independent``
    spec. Accepts a posterior sampled elsewhere (the batched executor)."""

    name = "bayes_independent"
    bayesian = True

    def prior(self, data, populations):
        return independent_prior()

    def fit(self, data, prior, settings, seed, posterior=None) -> FittedCell:
        if posterior is None:
            x_n, x_d = centre(data.train_num_params, data.train_tokens)
            arrays = FamilyArrays.from_arrays(x_n, x_d, data.train_run, np.log(data.train_loss), data.train_models)
            posterior = arrays.fit(prior, seed=seed, **_sampler(settings))
        n_pred = int(settings.get("n_pred_draws", 0))

        def predict(target, s):
            tn, td = centre(np.full_like(target.tokens, target.num_params), target.tokens)
            draws = _subsample(posterior.predict_new_run(tn, td, seed=s), n_pred, s)
            return np.median(draws, axis=0), draws

        return FittedCell(predict, divergences=posterior.divergences, max_rhat=posterior.max_rhat)


def public_path_fit(data, population, seed: int, **sampler):
    """The :class:`~bayes_scaling.inference.Fit` a user gets from a cell's training runs:
    ``fit(train runs, population=population)`` with ``seed`` and ``sampler`` (default
    :data:`~bayes_scaling.cellfit.SAMPLER_DEFAULTS`)."""
    table = pd.DataFrame(
        {
            "family": data.family,
            "model": np.asarray(data.train_models)[data.train_run],
            "num_params": data.train_num_params,
            "tokens": data.train_tokens,
            "loss": data.train_loss,
        }
    )
    # the protocol already cut and thinned the training checkpoints
    return fit_with_population(table, population, filters=Filters(min_tokens=0.0, max_checkpoints=None), seed=seed, **sampler)


class BayesHierarchical(Estimator):
    """Exactly what a user runs: ``fit(train runs, population=...)``, then
    ``predict_loss(kind="new_run", observation_noise=True)`` at the target's checkpoints.
    The population is the back-test's for the cell's family (without its source group)."""

    name = "bayes_hierarchical"
    bayesian = True
    needs_population = True

    def prior(self, data, populations):
        try:
            return populations[data.min_tokens][data.family]
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"no population prior for family {data.family!r} at min_tokens={data.min_tokens:g}; run population_priors first"
            ) from exc

    def fit(self, data, prior, settings, seed, posterior=None) -> FittedCell:
        if posterior is not None:
            raise ValueError(f"{self.name} is fitted through bs.fit; a posterior sampled elsewhere does not apply")
        sampler = _sampler(settings)
        fit = public_path_fit(data, prior, seed, **sampler)
        report = check_convergence(fit.idata)  # the verdict the user gets from this fit
        message = ""
        if fit.settings.get("tempered"):
            message = f"fitted again as a replica exchange over {len(TEMPERATURES)} temperatures: r_hat above {MIXED_RHAT} at first"
        elif fit.settings.get("retried"):
            message = (
                f"chains carried on to {sampler['retry_thinning']}x the iterations: "
                f"r_hat above {MAX_R_HAT} or ESS below {MIN_ESS_PER_CHAIN} per chain at first"
            )
        n_pred = int(settings.get("n_pred_draws", 0))

        def predict(target, s):
            pred = predict_loss(fit, data.family, target.num_params, target.tokens, kind="new_run", observation_noise=True, seed=s)
            draws = _subsample(pred.stack(sample=("chain", "draw")).transpose("sample", "point").values, n_pred, s)
            return np.median(draws, axis=0), draws

        return FittedCell(predict, message=message, divergences=report.divergences, max_rhat=report.max_r_hat)


#: The estimators by name, in the order reports list them.
REGISTRY: dict[str, Estimator] = {
    e.name: e
    for e in (PointFitEstimator("classic", fit_classic), PointFitEstimator("classic_huber", fit_classic_huber), BayesIndependent(), BayesHierarchical())
}
#: Their names, and those of the sampled ones.
ESTIMATORS = tuple(REGISTRY)
BAYES_ESTIMATORS = tuple(name for name, e in REGISTRY.items() if e.bayesian)


def resolve(names: Iterable[str]) -> tuple[Estimator, ...]:
    """The estimators of ``names`` (DataError naming the unknown ones and the choices)."""
    names = tuple(names)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        raise DataError(f"unknown estimators {unknown}; choose from {list(REGISTRY)}")
    return tuple(REGISTRY[n] for n in names)
