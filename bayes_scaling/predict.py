"""Posterior predictive loss at new (family, N, D) points; never mutates the fit.

Three kinds of prediction, each a distribution over posterior draws:

``family``
    the family's expected loss curve at (N, D): parameter uncertainty only;
``new_run``
    a run of that family not yet trained: adds a run offset drawn with ``sigma_run``
    (seeds alone move loss by a few percent), which is what a planned run needs;
``new_family``
    a family absent from the data: theta drawn from the population per draw (the joint
    model's ``MultivariateNormal(mu, Sigma)``, or a population prior's Student-t), plus a
    new run offset. Under a population prior the loss, the exponential of Student-t draws,
    has no finite mean: :func:`summarize` gives NaN for it; read the quantiles.

With ``observation_noise=True`` a checkpoint's noise (the likelihood, per family) is added,
which is what an observed loss value is compared against.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DataError, ExtrapolationWarning, FitError
from .inference import Fit
from .laws import PARAM_NAMES, centre, chinchilla_log_loss
from .popfit import prior_from_attrs

KINDS = ("family", "new_run", "new_family")
#: Predictions this many e-folds (1000x) beyond the training sizes or tokens warn.
EXTRAPOLATION_WARN_EFOLDS = float(np.log(1000.0))
SUMMARY_QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}


def _population_theta(fit: Fit, rng: np.random.Generator) -> xr.DataArray:
    post = fit.idata.posterior
    if "tau" not in post or "corr_cholesky" not in post:
        if "mu" in post:  # complete pooling: every family is the population
            return post["mu"]
        raise FitError(f"spec {fit.spec.name!r} has no population (pooling='{fit.spec.pooling}'); a new family needs partial pooling")
    mu = post["mu"].values  # chain, draw, param
    scale_tril = post["tau"].values[..., :, None] * post["corr_cholesky"].values
    z = rng.standard_normal(mu.shape)
    theta = mu + np.einsum("cdij,cdj->cdi", scale_tril, z)
    return xr.DataArray(theta, dims=("chain", "draw", "param"), coords={"chain": post.chain, "draw": post.draw, "param": list(PARAM_NAMES)})


def _sigma_run(fit: Fit, family_index: int | None, rng: np.random.Generator) -> np.ndarray:
    """Posterior draws of the run-offset sd that applies to one family (zeros without offsets)."""
    post = fit.idata.posterior
    shape = (post.sizes["chain"], post.sizes["draw"])
    if "sigma_run" not in post:
        return np.zeros(shape)
    sigma = post["sigma_run"]
    if "family" not in sigma.dims:
        return sigma.values
    if family_index is not None:
        return sigma.isel(family=family_index).values
    # a new family: the run scale of a family picked at random per draw, among those whose
    # runs identify one (the others hold their run spread in the noise)
    sigma = sigma.transpose("chain", "draw", "family").values
    fitted = np.flatnonzero((sigma > 0).any(axis=(0, 1)))
    if not fitted.size:
        return np.zeros(shape)
    pick = fitted[rng.integers(0, fitted.size, size=shape)]
    return np.take_along_axis(sigma, pick[..., None], axis=-1)[..., 0]


def _size_discrepancy(fit: Fit, family_index: int) -> tuple[np.ndarray | None, float]:
    """``(sigma_size draws (chain, draw), size_anchor)`` of one family of a fit under a
    population; ``(None, 0.0)`` for a joint-model fit (no size discrepancy)."""
    post = fit.idata.posterior
    if "sigma_size" not in post:
        return None, 0.0
    return post["sigma_size"].isel(family=family_index).values, float(fit.idata.constant_data["size_anchor"].values[family_index])


def family_draws(fit: Fit, family: str | None, kind: str = "family", seed: int = 0) -> xr.Dataset:
    """Posterior draws of one family's law, ready to evaluate anywhere.

    Parameters
    ----------
    fit : Fit
    family : str or None
        A family of the fit; ignored (may be None) for ``kind="new_family"``.
    kind : {"family", "new_run", "new_family"}
        See the module docstring.
    seed : int
        Seed for the run offset and population draws.

    Returns
    -------
    xarray.Dataset
        Variables ``log_e, log_a, log_b, alpha, beta`` (centred units, see
        :mod:`bayes_scaling.laws`), ``run_offset`` (on log loss; 0 for ``family``),
        ``size_offset`` (per unit of distance in log N from attr ``size_anchor``, the largest
        training size; 0 for ``family`` and for joint-model fits, see :func:`size_offset`) and
        ``sigma_obs`` (checkpoint noise sd on log loss); dims ``(chain, draw)``. Attrs carry
        the reference points, the likelihood and its ``df``.
    """
    if not isinstance(fit, Fit):
        raise FitError(f"fit must be a Fit (bayes_scaling.fit or Fit.load), got {type(fit).__name__}")
    if kind not in KINDS:
        raise FitError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != "new_family" and not isinstance(family, str):
        raise FitError(f"family must be a family name (str) of the fit, got {type(family).__name__}")
    rng = np.random.default_rng(seed)
    post = fit.idata.posterior
    spec = fit.spec
    population = prior_from_attrs(fit)
    sigma_size, size_anchor = np.zeros((post.sizes["chain"], post.sizes["draw"])), 0.0
    if kind == "new_family" and population is not None:
        theta, sigma_run, sigma_obs = _new_family_from_prior(population, post, rng)
    elif kind == "new_family":
        theta = _population_theta(fit, rng)
        # noise of an unseen family: that of a family picked at random per draw
        sigma_obs_all = post["sigma_obs"].values
        pick = rng.integers(0, sigma_obs_all.shape[-1], size=sigma_obs_all.shape[:2])
        sigma_obs = np.take_along_axis(sigma_obs_all, pick[..., None], axis=-1)[..., 0]
        sigma_run = _sigma_run(fit, None, rng)
    else:
        f = fit.require_family(family)
        theta = post["theta"].isel(family=f)
        sigma_obs = post["sigma_obs"].isel(family=f).values
        sigma_run = _sigma_run(fit, f, rng)
        own_size, size_anchor = _size_discrepancy(fit, f)
        if own_size is not None:  # fitted under a population: planned runs widen beyond the largest size
            sigma_size = own_size
    new_run = kind != "family"
    offset = sigma_run * rng.standard_normal(sigma_run.shape) if new_run else np.zeros_like(sigma_run)
    size_draw = sigma_size * rng.standard_normal(sigma_size.shape) if new_run else np.zeros_like(sigma_size)
    coords = {"chain": post.chain.values, "draw": post.draw.values}
    dims = ("chain", "draw")
    data = {name: (dims, np.asarray(theta.sel(param=name).values, dtype=float)) for name in PARAM_NAMES}
    data["run_offset"] = (dims, offset)
    data["size_offset"] = (dims, size_draw)
    data["sigma_obs"] = (dims, np.asarray(sigma_obs, dtype=float))
    attrs = {
        "size_anchor": size_anchor,
        "family": "" if family is None else str(family),
        "kind": kind,
        "reference_params": spec.reference_params,
        "reference_tokens": spec.reference_tokens,
        "likelihood": spec.likelihood,
        "likelihood_df": spec.likelihood_df if spec.likelihood_df is not None else 0.0,
        # exp of a Student-t draw has no mean: a sample mean there is one extreme draw's
        "mean_exists": int(not (kind == "new_family" and population is not None and np.isfinite(population.df))),
        **_training_range(fit, None if kind == "new_family" else family),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def size_offset(draws: xr.Dataset, x_n) -> np.ndarray:
    """Offset on log loss (chain, draw, point) of a planned run's size: its ``size_offset`` per
    unit of distance in log N from the family's largest training size (0 for fits without one)."""
    if "size_offset" not in draws:
        return np.zeros(draws["log_e"].shape + (np.size(x_n),))
    distance = np.abs(np.asarray(x_n, float) - float(draws.attrs.get("size_anchor", 0.0)))
    return draws["size_offset"].values[..., None] * distance


def _new_family_from_prior(prior, post, rng):
    """theta (as DataArray), sigma_run and sigma_obs draws of a family absent from a population fit."""
    shape = (post.sizes["chain"], post.sizes["draw"])
    theta = xr.DataArray(prior.sample_theta(rng, shape), dims=("chain", "draw", "param"), coords={"chain": post.chain, "draw": post.draw, "param": list(PARAM_NAMES)})
    sigma_run = prior.sample_scale("run", rng, shape)
    sigma_obs = prior.sample_scale("noise", rng, shape)
    return theta, sigma_run, sigma_obs


def _training_range(fit: Fit, family: str | None) -> dict:
    """Smallest and largest N and D the fit saw (of one family, or of all for None), as attrs."""
    const = fit.idata.constant_data if "constant_data" in fit.idata.groups() else None
    if const is None or "num_params" not in const or "tokens" not in const:
        return {}
    n, d = np.asarray(const["num_params"].values, dtype=float), np.asarray(const["tokens"].values, dtype=float)
    if family is not None:
        mine = np.asarray(const["family_idx"].values) == fit.require_family(family)
        n, d = n[mine], d[mine]
    if not n.size:
        return {}
    return {"train_num_params": [float(n.min()), float(n.max())], "train_tokens": [float(d.min()), float(d.max())]}


def efolds_outside(draws: xr.Dataset, num_params, tokens) -> np.ndarray | None:
    """How far each (N, D) point lies outside the sizes and tokens the fit trained on, in
    e-folds: ``max(0, log(N / N_max), log(N_min / N), log(D / D_max), log(D_min / D))``
    over the family's training checkpoints (all families for ``new_family`` draws).
    0 inside the range; 2.3 is 10x beyond it. None when the draws do not carry the range.
    """
    if "train_num_params" not in draws.attrs:
        return None
    n, d = _points(num_params, tokens)
    (n_lo, n_hi), (d_lo, d_hi) = draws.attrs["train_num_params"], draws.attrs["train_tokens"]
    out = np.stack([np.log(n / n_hi), np.log(n_lo / n), np.log(d / d_hi), np.log(d_lo / d)]).max(axis=0)
    return np.maximum(out, 0.0)


def extrapolation_note(efolds, limit: float = EXTRAPOLATION_WARN_EFOLDS) -> str | None:
    """A one-line warning when the largest of ``efolds`` exceeds ``limit``, else None."""
    worst = float(np.max(efolds)) if efolds is not None and np.size(efolds) else 0.0
    if not worst > limit:
        return None
    return (
        f"a query lies {worst:.1f} e-folds ({np.exp(min(worst, 700)):.3g}x) outside the model sizes and tokens "
        f"the fit was trained on; a scaling law is not evidence that far out"
    )


def _as_floats(name: str, values) -> np.ndarray:
    try:
        return np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number or an array of numbers (a plain count, e.g. 7e9), got {values!r}") from None


def _points(num_params, tokens) -> tuple[np.ndarray, np.ndarray]:
    n, d = _as_floats("num_params", num_params), _as_floats("tokens", tokens)
    try:
        n, d = np.broadcast_arrays(n, d)
    except ValueError:
        raise DataError(f"num_params ({n.size} values) and tokens ({d.size} values) must have equal lengths or one of either") from None
    for name, values in (("num_params", n), ("tokens", d)):
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise DataError(f"{name} must be finite and > 0, got {values[~(np.isfinite(values) & (values > 0))][:3].tolist()}")
    return n.ravel(), d.ravel()


def loss_from_draws(draws: xr.Dataset, num_params, tokens, observation_noise: bool = False, seed: int = 0) -> xr.DataArray:
    """Evaluate the law of :func:`family_draws` output at (N, D) points.

    Returns
    -------
    xarray.DataArray
        Loss in the family's units (nats), dims ``(chain, draw, point)`` with coords
        ``num_params`` and ``tokens`` on ``point``.
    """
    n, d = _points(num_params, tokens)
    x_n, x_d = centre(n, d, draws.attrs["reference_params"], draws.attrs["reference_tokens"])
    p = {name: draws[name].values[..., None] for name in PARAM_NAMES}
    log_loss = np.asarray(chinchilla_log_loss(x_n, x_d, p["log_e"], p["log_a"], p["log_b"], p["alpha"], p["beta"]), dtype=float)
    log_loss = log_loss + draws["run_offset"].values[..., None] + size_offset(draws, x_n)
    if observation_noise:
        rng = np.random.default_rng(seed)
        shape = log_loss.shape
        eps = rng.standard_t(draws.attrs["likelihood_df"], shape) if draws.attrs["likelihood"] == "student_t" else rng.standard_normal(shape)
        log_loss = log_loss + draws["sigma_obs"].values[..., None] * eps
    coords = {"chain": draws.chain.values, "draw": draws.draw.values, "num_params": ("point", n), "tokens": ("point", d)}
    efolds = efolds_outside(draws, n, d)
    if efolds is not None:
        coords["efolds_outside"] = ("point", efolds)
        note = extrapolation_note(efolds)
        if note:
            warnings.warn(note, ExtrapolationWarning, stacklevel=2)
    return xr.DataArray(
        np.exp(log_loss),
        dims=("chain", "draw", "point"),
        coords=coords,
        name="loss",
        attrs={"family": draws.attrs["family"], "kind": draws.attrs["kind"], "mean_exists": draws.attrs.get("mean_exists", 1), "units": "loss (nats), as in the family's data"},
    )


def predict_loss(
    fit: Fit,
    family: str | None,
    num_params,
    tokens,
    kind: str = "family",
    observation_noise: bool = False,
    seed: int = 0,
) -> xr.DataArray:
    """Posterior predictive loss of ``family`` at (N, D) points.

    Parameters
    ----------
    fit : Fit
    family : str or None
        Family of the fit (None allowed for ``kind="new_family"``).
    num_params, tokens : float or array
        Parameter count and training tokens (plain counts, broadcast together).
    kind : {"family", "new_run", "new_family"}
        See the module docstring.
    observation_noise : bool
        Add checkpoint noise (compare against observed losses).
    seed : int
        Seed of the random parts (run offset, population draw, noise).

    Returns
    -------
    xarray.DataArray
        Loss (nats), dims ``(chain, draw, point)``.
    """
    draws = family_draws(fit, family, kind=kind, seed=seed)
    return loss_from_draws(draws, num_params, tokens, observation_noise=observation_noise, seed=seed + 1)


def summarize(pred: xr.DataArray) -> pd.DataFrame:
    """Median, mean and central 50% / 90% intervals per point of a prediction.

    Returns
    -------
    DataFrame
        Columns ``num_params, tokens, mean, median, q05, q25, q75, q95`` (and ``family``,
        ``kind`` and ``efolds_outside`` (see :func:`efolds_outside`) when known), one row
        per point. ``mean`` is NaN where the loss has no finite mean (a new family under a
        population prior, see the module docstring).
    """
    stacked = pred.stack(sample=("chain", "draw")).transpose("point", "sample").values
    out = pd.DataFrame({"num_params": pred["num_params"].values, "tokens": pred["tokens"].values})
    if pred.attrs.get("family"):
        out.insert(0, "family", pred.attrs["family"])
    if pred.attrs.get("kind"):
        out["kind"] = pred.attrs["kind"]
    out["mean"] = stacked.mean(axis=1) if pred.attrs.get("mean_exists", 1) else np.nan
    for col, q in SUMMARY_QUANTILES.items():
        out[col] = np.quantile(stacked, q, axis=1)
    if "efolds_outside" in pred.coords:
        out["efolds_outside"] = pred["efolds_outside"].values
    return out[[c for c in out.columns if c != "kind"] + (["kind"] if "kind" in out else [])]
