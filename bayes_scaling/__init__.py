"""bayes_scaling: Bayesian scaling laws that predict LLM loss with honest uncertainty.

Typical use::

    import bayes_scaling as bs
    runs, truth = bs.datasets.synthetic(n_families=12, seed=0)
    fit = bs.fit(runs, chains=4, draws=500, seed=0)
    pred = bs.predict_loss(fit, "synth-00", num_params=7e9, tokens=1.4e11, kind="new_run")
    bs.summarize(pred)
"""

import warnings

with warnings.catch_warnings():
    # arviz 0.23 prints a notice of its 1.0 refactor once a day at import: not our users'
    # concern (pyproject pins arviz below 1); scoped, so no filter outlives the import
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz  # noqa: F401

from . import data, datasets, io, laws, spec
from .data import Filters, load_runs, prepare
from .errors import (
    BayesScalingError,
    ConvergenceWarning,
    DataError,
    DataWarning,
    DecisionWarning,
    ExtrapolationWarning,
    FitError,
    OutputError,
    SpecError,
)
from .inference import Fit, fit
from .predict import family_draws, predict_loss, summarize
from .spec import load_spec

__version__ = "0.1.0"

__all__ = [
    "BayesScalingError",
    "ConvergenceWarning",
    "DataError",
    "DataWarning",
    "DecisionWarning",
    "ExtrapolationWarning",
    "Filters",
    "Fit",
    "FitError",
    "OutputError",
    "SpecError",
    "data",
    "datasets",
    "family_draws",
    "fit",
    "io",
    "laws",
    "load_runs",
    "load_spec",
    "predict_loss",
    "prepare",
    "spec",
    "summarize",
]
