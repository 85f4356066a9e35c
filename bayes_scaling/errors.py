"""Exceptions and warnings that users of bayes_scaling catch.

Every error raised on purpose derives from :class:`BayesScalingError`, including wrong
argument types (a ``DataError`` or ``FitError`` saying what was expected), so one
``except BayesScalingError`` catches them all.
"""


class BayesScalingError(Exception):
    """Base class of every error raised on purpose by this package."""


class DataError(BayesScalingError, ValueError):
    """The runs table is unusable; the message names the column and first offending rows."""


class SpecError(BayesScalingError, ValueError):
    """A model spec (TOML) is invalid; the message names the file and the key."""


class FitError(BayesScalingError, ValueError):
    """A fit or saved fit cannot serve the request (unknown family, missing group, ...)."""


class PopulationError(BayesScalingError, ValueError):
    """A population file cannot be used (corrupted, another format version, not a population)."""


class OutputError(BayesScalingError, OSError):
    """Results cannot be written where asked (a file in the way, read-only, in use by another run)."""


class ConvergenceWarning(UserWarning):
    """The sampler did not converge well enough to trust the numbers (r_hat, ESS, divergences)."""


class ExtrapolationWarning(UserWarning):
    """A prediction lies far outside the model sizes or tokens the fit was trained on."""


class DataWarning(UserWarning):
    """The data break an assumption of the law (a run whose loss rises late in training): the
    fit runs, but what it extrapolates may be off."""


class DecisionWarning(UserWarning):
    """Part of a decision is not defined for some posterior draws (no compute-optimal split) or
    rests on the edge of its search range."""


__all__ = ["BayesScalingError", "ConvergenceWarning", "DataError", "DataWarning", "DecisionWarning", "ExtrapolationWarning", "FitError", "OutputError", "PopulationError", "SpecError"]
