"""Small single-family NUTS fits with a given prior, compiled once for many back-test cells.

The back-test (:mod:`bayes_scaling.backtest`) fits hundreds of cells: one family's
training runs for one (k, fraction, token cut). Compiling a NUTS sampler per cell would
cost more than the sampling, so this module fits every cell with *one* small model whose
prior arrives as array arguments:

    theta ~ Normal(loc, scale_tril scale_tril^T)   (sampled in level coordinates, below;
            a multivariate Student-t with that scale when the prior has a finite ``df``)
    sigma_run ~ prior_run,  u_r ~ Normal(0, sigma_run)          (run offsets on log loss)
    sigma_obs ~ prior_obs
    (optional) sigma_size ~ prior_size: u_r ~ Normal(0, sqrt(sigma_run^2 + (sigma_size d_r)^2)),
        d_r = |log N_r - log N of the cell's largest size| (see "Size discrepancy" below)
    log L_i ~ StudentT(nu) or Normal(chinchilla_log_loss(theta) + u_run(i), sigma_obs), masked

With ``nu = inf`` (Normal, as in the shipped ``chinchilla_hierarchical``) the offsets u_r
are integrated out exactly, as in the full model (:class:`bayes_scaling.model.RunMarginalNormal`);
with a finite ``nu`` (``chinchilla_independent``: 4) the likelihood is Student-t and the
offsets are sampled, ``u_r = sigma_run * z_r``.

The data are padded to a bucket of shapes (points to 64 x 4^j, runs to 8 x 8^j) and
a boolean mask removes the padding from the likelihood; the whole NUTS run is traced under
``jax.jit`` with the data and the prior as traced arguments, so one compiled sampler serves
every cell with the same bucket, prior kind and sampler settings. Padded run offsets are sampled from their prior and never used.

Priors that feed this model:

* :func:`independent_prior` - the ``chinchilla_independent`` spec's weak priors
  (``bayes_independent``: the held-out family alone, no pooling);
* :func:`random_effects_prior` (default of ``bayes_hierarchical``) and :func:`mixture_prior` -
  a population built from other families' cell posteriors, each fitted alone under the
  independent prior: the Student-t predictive of a random-effects meta-analysis of their
  posteriors of theta (families weigh by how well they pin each parameter), or the
  equal-weight mixture of them;
* :func:`population_prior` - a summary of a full hierarchical fit of *other* families
  (``bayes_hierarchical`` with ``method="hierarchical"``): the population predictive of a new family's theta, moment-matched
  to a multivariate normal (mean and covariance of ``mu + diag(tau) L z`` over posterior
  draws, so uncertainty in mu, tau and the correlation is carried), a log-normal matched to
  the posterior of ``sigma_run``, and a log-normal matched to the posterior medians of the
  per-family noise scales ``sigma_obs`` (the spec gives those no hierarchy, so the spread
  across families is the best available statement of what noise a new family has).

Size discrepancy: the Chinchilla form is a model, and a family's losses bend away from it
the further one goes from the sizes it was fitted to (in-sample residuals of classic fits on
the corpus grow with the distance in log N from the middle of a family's sizes). With
``CellPrior.size_scale`` set, a run's offset gets an extra sd ``sigma_size`` per unit of
distance in log N from the *largest* training size: the law is anchored where extrapolation
starts, smaller runs may sit further off it, and a prediction for a larger model inherits a
spread that grows with how far it extrapolates. (Anchored at the middle of the sizes, the
largest runs were free to sit above the law and the population's E fell: on the corpus,
median ARE at k = 1 was 12.6% against 12.0% anchored at the largest size and 13.2% with no
size term.) Without the term, five training sizes pin the parameters so tightly that
intervals at the target are narrower than the law's own error there.

This is an empirical-Bayes style two-stage approximation of the full hierarchical model:
the held-out family's data update its own theta but do not feed back into the population.
With dozens of families in the population and one family held out, that feedback would be
small; the saving is one large NUTS fit per fold instead of one per cell.

Units: covariates centred as in :mod:`bayes_scaling.laws` (``x_n = log(N / 1e9)``,
``x_d = log(D / 1e11)``), loss in nats, scales on natural-log loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_median

from .laws import PARAM_NAMES, chinchilla_log_loss, from_level_coordinates
from .model import LevelMultivariateNormal, RunMarginalNormal

N_PARAMS = len(PARAM_NAMES)
SCALE_PRIOR_KINDS = ("half_normal", "lognormal")


@dataclass(frozen=True)
class CellPrior:
    """Prior of a single-family cell fit (all plain NumPy, picklable).

    Attributes
    ----------
    loc : ndarray (5,)
        Prior mean of theta = (log_e, log_a, log_b, alpha, beta), centred units.
    scale_tril : ndarray (5, 5)
        Lower Cholesky factor of the prior covariance of theta.
    scale_kind : {"half_normal", "lognormal"}
        Family of the priors on ``sigma_run`` and ``sigma_obs``.
    run_scale : (float, float)
        ``(scale, unused)`` for half_normal, ``(mean of log, sd of log)`` for lognormal.
    noise_scale : (float, float)
        Same convention, for the observation noise on log loss.
    nu : float
        Degrees of freedom of a Student-t likelihood; ``math.inf``: Normal likelihood with
        the run offsets integrated out (see :attr:`marginal`).
    source : str
        Where the prior came from (for reports).
    size_scale : (float, float) or None
        Prior of ``sigma_size`` (sd of log loss per unit of distance in log N from the largest
        training size; same convention as ``run_scale``); None: no size discrepancy.
    df : float
        Degrees of freedom of a multivariate Student-t prior on theta, with ``scale_tril``
        its scale; ``math.inf``: normal, ``scale_tril`` the covariance's factor.
    """

    loc: np.ndarray
    scale_tril: np.ndarray
    scale_kind: str
    run_scale: tuple[float, float]
    noise_scale: tuple[float, float]
    nu: float = 4.0
    source: str = ""
    size_scale: tuple[float, float] | None = None
    df: float = math.inf

    def __post_init__(self):
        if self.scale_kind not in SCALE_PRIOR_KINDS:
            raise ValueError(f"scale_kind must be one of {SCALE_PRIOR_KINDS}, got {self.scale_kind!r}")
        loc = np.asarray(self.loc, float)
        tril = np.asarray(self.scale_tril, float)
        if loc.shape != (N_PARAMS,) or tril.shape != (N_PARAMS, N_PARAMS):
            raise ValueError(f"loc must be (5,) and scale_tril (5, 5), got {loc.shape} and {tril.shape}")
        if not self.df > 0:
            raise ValueError(f"df must be > 0 (math.inf: a normal prior), got {self.df!r}")
        object.__setattr__(self, "loc", loc)
        object.__setattr__(self, "scale_tril", tril)

    @property
    def marginal(self) -> bool:
        """True for the Normal likelihood: run offsets integrated out, not sampled."""
        return not math.isfinite(self.nu)

    @property
    def size_term(self) -> bool:
        """True when run offsets grow with the distance in log N (``size_scale`` set)."""
        return self.size_scale is not None

    @property
    def heavy_tailed(self) -> bool:
        """True for a Student-t prior on theta (finite ``df``)."""
        return math.isfinite(self.df)

    @property
    def kind(self) -> tuple[str, bool, bool, bool]:
        """What the compiled cell model depends on: (scale_kind, marginal, size_term, heavy_tailed)."""
        return (self.scale_kind, self.marginal, self.size_term, self.heavy_tailed)

    def shape_args(self) -> tuple[float, float, float]:
        """``size_scale`` and ``df`` as three model arguments (placeholders where unused)."""
        size = tuple(float(v) for v in self.size_scale) if self.size_term else (1.0, 1.0)
        return (*size, float(self.df) if self.heavy_tailed else 1.0)

    @property
    def cov(self) -> np.ndarray:
        """``scale_tril scale_tril^T``: the covariance of a normal prior, the scale matrix of a Student-t."""
        return self.scale_tril @ self.scale_tril.T

    def to_dict(self) -> dict:
        return {
            "loc": self.loc.tolist(),
            "sd": np.sqrt(np.diag(self.cov)).tolist(),
            "scale_kind": self.scale_kind,
            "run_scale": list(self.run_scale),
            "noise_scale": list(self.noise_scale),
            "nu": self.nu,
            "source": self.source,
            "size_scale": None if self.size_scale is None else list(self.size_scale),
            "df": self.df,
        }


def independent_prior(spec="chinchilla_independent") -> CellPrior:
    """Cell prior from a spec without pooling (default: ``chinchilla_independent``).

    Requires normal mean priors and half-normal run/noise scale priors (as shipped).
    """
    from .spec import load_spec

    spec = load_spec(spec)
    for prior in spec.mean_priors:
        if prior.dist != "normal":
            raise ValueError(f"independent_prior needs normal mean priors, spec {spec.name} has {prior.dist}")
    for name, prior in (("run_scale", spec.run_scale_prior), ("noise_scale", spec.noise_scale_prior)):
        if prior.dist != "half_normal":
            raise ValueError(f"independent_prior needs a half_normal {name} prior, spec {spec.name} has {prior.dist}")
    loc = np.array([p.kwargs()["loc"] for p in spec.mean_priors])
    sd = np.array([p.kwargs()["scale"] for p in spec.mean_priors])
    return CellPrior(
        loc=loc,
        scale_tril=np.diag(sd),
        scale_kind="half_normal",
        run_scale=(float(spec.run_scale_prior.kwargs()["scale"]), 0.0),
        noise_scale=(float(spec.noise_scale_prior.kwargs()["scale"]), 0.0),
        nu=_likelihood_nu(spec),
        source=f"spec {spec.name}",
    )


def _likelihood_nu(spec) -> float:
    """Cell likelihood of a spec: Student-t degrees of freedom, or inf for Normal."""
    return float(spec.likelihood_df) if spec.likelihood == "student_t" else math.inf


def _lognormal_match(values) -> tuple[float, float]:
    logs = np.log(np.asarray(values, float).ravel())
    logs = logs[np.isfinite(logs)]
    return float(np.mean(logs)), float(max(np.std(logs), 1e-3))


def _tril(cov) -> np.ndarray:
    return np.linalg.cholesky(cov + 1e-9 * np.eye(N_PARAMS))


def population_prior(fit, n_draws: int = 4000, seed: int = 0) -> CellPrior:
    """Summarise a hierarchical :class:`~bayes_scaling.inference.Fit` as a :class:`CellPrior`.

    Parameters
    ----------
    fit : Fit
        A partial-pooling fit (posterior has ``mu``, ``tau``, ``corr``, ``sigma_run``,
        ``sigma_obs``).
    n_draws : int
        Draws of a new family's theta used for the moment match.
    seed : int
        Seed of those draws.
    """
    post = fit.idata.posterior
    for name in ("mu", "tau", "corr", "sigma_obs"):
        if name not in post:
            raise ValueError(f"population_prior needs a partial-pooling fit; posterior has no {name!r}")
    mu = post["mu"].transpose("chain", "draw", "param").values.reshape(-1, N_PARAMS)
    tau = post["tau"].transpose("chain", "draw", "param").values.reshape(-1, N_PARAMS)
    corr = post["corr"].transpose("chain", "draw", "param", "param_").values.reshape(-1, N_PARAMS, N_PARAMS)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(mu), n_draws)
    chol = np.linalg.cholesky(corr[idx] + 1e-9 * np.eye(N_PARAMS))
    z = rng.standard_normal((n_draws, N_PARAMS))
    theta = mu[idx] + tau[idx] * np.einsum("sij,sj->si", chol, z)
    loc = theta.mean(axis=0)
    cov = np.cov(theta, rowvar=False)
    if "sigma_run_fitted" in post:  # families whose runs identify a run scale (the others hold 0)
        run_scale = _lognormal_match(post["sigma_run_fitted"].values)
    elif "sigma_run" in post:
        run_scale = _lognormal_match(post["sigma_run"].values)
    else:
        run_scale = (np.log(1e-3), 1e-3)
    noise_medians = post["sigma_obs"].median(("chain", "draw")).values
    spec = fit.spec
    return CellPrior(
        loc=loc,
        scale_tril=_tril(cov),
        scale_kind="lognormal",
        run_scale=run_scale,
        noise_scale=_lognormal_match(noise_medians),
        nu=_likelihood_nu(spec),
        source=f"population of {len(fit.families)} families",
    )


def _scale_dist(kind, a, b):
    if kind == "half_normal":
        return dist.HalfNormal(a)
    return dist.LogNormal(a, b)


def dense_sites(size_term: bool) -> tuple[str, ...]:
    """Dense block of the mass matrix (shared with ``batched``); sampled run offsets stay diagonal."""
    return ("theta_level", "sigma_run", "sigma_obs") + (("sigma_size",) if size_term else ())


def data_centre(x_n, x_d, mask):
    """Mean (x_n, x_d) over a cell's unpadded checkpoints: where its level coordinates sit."""
    weight = mask.astype(x_n.dtype)
    count = jnp.maximum(weight.sum(), 1.0)
    return (weight * x_n).sum() / count, (weight * x_d).sum() / count


def size_anchor(x_n, mask):
    """Largest log N over a cell's unpadded checkpoints (centred units): where the law is anchored."""
    return jnp.max(jnp.where(mask, x_n, -jnp.inf))


def run_size_distance(x_n, run_idx, mask, n_runs: int):
    """Per run, ``size_anchor - log N`` (>= 0); 0 for padded runs (a run has one size)."""
    distance = jnp.where(mask, size_anchor(x_n, mask) - x_n, 0.0)
    return jnp.maximum(jax.ops.segment_max(distance, run_idx, n_runs), 0.0)  # empty run: -inf -> 0


@lru_cache(maxsize=None)
def _model(scale_kind: str, marginal: bool, size_term: bool = False, heavy_tailed: bool = False):
    """The cell model; ``marginal``: Normal likelihood with the run offsets integrated out;
    ``size_term``: run offsets widen with the distance in log N (``sigma_size``);
    ``heavy_tailed``: Student-t prior on theta with ``prior_df`` degrees of freedom.

    theta is sampled in level coordinates at the cell's data centre, as in the full model
    (:class:`bayes_scaling.model.LevelMultivariateNormal`): with one or two model sizes the
    data pin the loss level but not its split into E and the N term, a thin curved ridge in
    theta (67% of the back-test's cells at the 1e10 cut had r_hat > 1.2 when theta was
    sampled as ``loc + L z``).
    """

    def model(x_n, x_d, run_idx, mask, run_mask, loc, scale_tril, run_a, run_b, noise_a, noise_b, nu, size_a, size_b, prior_df, log_loss=None):
        x_n0, x_d0 = data_centre(x_n, x_d, mask)
        level = numpyro.sample("theta_level", LevelMultivariateNormal(loc, scale_tril, x_n0, x_d0, df=prior_df if heavy_tailed else None))
        theta = numpyro.deterministic("theta", from_level_coordinates(level, x_n0, x_d0))
        sigma_run = numpyro.sample("sigma_run", _scale_dist(scale_kind, run_a, run_b))
        sigma_obs = numpyro.sample("sigma_obs", _scale_dist(scale_kind, noise_a, noise_b))
        n_runs = run_mask.shape[0]
        run_sd = jnp.full(n_runs, sigma_run)
        if size_term:
            sigma_size = numpyro.sample("sigma_size", _scale_dist(scale_kind, size_a, size_b))
            run_sd = jnp.hypot(run_sd, sigma_size * run_size_distance(x_n, run_idx, mask, n_runs))
        mean = chinchilla_log_loss(x_n, x_d, *[theta[i] for i in range(N_PARAMS)])
        if marginal:
            numpyro.sample(
                "log_loss", RunMarginalNormal(mean, run_idx, jnp.full(n_runs, sigma_obs), run_sd, weight=mask.astype(mean.dtype)), obs=log_loss
            )
            return
        run_z = numpyro.sample("run_z", dist.Normal(0.0, 1.0).expand([n_runs]).to_event(1))
        mean = mean + run_sd[run_idx] * run_z[run_idx]
        numpyro.sample("log_loss", dist.StudentT(nu, mean, sigma_obs).mask(mask).to_event(1), obs=log_loss)

    return model


#: (minimum, base) of the padding buckets for checkpoints and runs; shared with ``batched``.
POINTS_BUCKET, RUNS_BUCKET = (64, 4), (8, 8)


def _bucket(n: int, minimum: int, base: int = 4) -> int:
    """Smallest ``minimum * base**j >= n``: coarse buckets, so few shapes (compilations)
    serve many cells; compilation, not sampling, dominates a small cell fit."""
    size = minimum
    while size < n:
        size *= base
    return int(size)


@lru_cache(maxsize=None)
def _sampler(
    kind: tuple[str, bool, bool, bool],
    n_points: int,
    n_runs: int,
    chains: int,
    warmup: int,
    draws: int,
    target_accept: float,
    max_tree_depth: int,
):
    """One jitted sampler per shape bucket and setting: ``f(rng_key, *model_args)``.

    The whole NUTS run (init, warmup, sampling) is traced inside ``jax.jit`` with the
    model arguments as traced inputs, so a second call with arrays of the same shapes
    reuses the compiled executable. (``MCMC(jit_model_args=True)`` re-compiled its sampling
    loop on every ``run`` here: about 35 s of XLA compilation per cell.)
    """

    size_term = kind[2]

    def run(rng_key, *args):
        kernel = NUTS(
            _model(*kind),
            dense_mass=[dense_sites(size_term)],
            target_accept_prob=target_accept,
            max_tree_depth=max_tree_depth,
            init_strategy=init_to_median(num_samples=15),
        )
        mcmc = MCMC(
            kernel,
            num_warmup=warmup,
            num_samples=draws,
            num_chains=chains,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(rng_key, *args, extra_fields=("diverging",))
        samples = mcmc.get_samples(group_by_chain=True)
        sigma_size = samples["sigma_size"] if size_term else jnp.zeros_like(samples["sigma_run"])
        diverging = mcmc.get_extra_fields(group_by_chain=True)["diverging"]
        return samples["theta"], samples["sigma_run"], samples["sigma_obs"], sigma_size, diverging

    return jax.jit(run)


@dataclass(frozen=True)
class CellPosterior:
    """Posterior draws of a cell fit (chains flattened), as NumPy arrays.

    Attributes
    ----------
    theta : ndarray (S, 5)
        (log_e, log_a, log_b, alpha, beta) per draw.
    sigma_run, sigma_obs : ndarray (S,)
    nu : float
    divergences : int
    max_rhat : float
        Largest split r-hat over theta (NaN with a single chain).
    sigma_size : ndarray (S,) or None
        Size discrepancy per unit of log N (None: the fit had no size term).
    size_anchor : float
        Largest training size in centred log N, where that distance is 0.
    """

    theta: np.ndarray
    sigma_run: np.ndarray
    sigma_obs: np.ndarray
    nu: float
    divergences: int
    max_rhat: float
    sigma_size: np.ndarray | None = None
    size_anchor: float = 0.0

    def predict_new_run(self, x_n, x_d, seed: int = 0, observation_noise: bool = True) -> np.ndarray:
        """Loss draws (S, points) at centred covariates for a run not in the data.

        Each draw adds one run offset ``u ~ Normal(0, sigma_run)`` shared by all points
        (they belong to one new run; with a size term its sd is
        ``sqrt(sigma_run^2 + (sigma_size |x_n - size_anchor|)^2)``) and, with ``observation_noise``, independent noise per
        point (Student-t, or Normal when ``nu`` is inf): the distribution of a *measured*
        checkpoint loss (nats).
        """
        x_n = np.asarray(x_n, float)
        x_d = np.asarray(x_d, float)
        rng = np.random.default_rng(seed)
        th = self.theta
        log_mean = np.asarray(
            chinchilla_log_loss(x_n[None, :], x_d[None, :], *[th[:, i : i + 1] for i in range(N_PARAMS)])
        )
        run_sd = self.sigma_run[:, None]
        if self.sigma_size is not None:
            run_sd = np.hypot(run_sd, self.sigma_size[:, None] * np.abs(x_n[None, :] - self.size_anchor))
        log_mean = log_mean + run_sd * rng.standard_normal(len(th))[:, None]
        if observation_noise:
            noise = rng.standard_t(self.nu, size=log_mean.shape) if math.isfinite(self.nu) else rng.standard_normal(log_mean.shape)
            log_mean = log_mean + self.sigma_obs[:, None] * noise
        return np.exp(log_mean)


def _split_rhat(x: np.ndarray) -> float:
    """Max split r-hat over the last axis of x with shape (chains, draws, k)."""
    c, n = x.shape[:2]
    if c < 2 or n < 4:
        return float("nan")
    half = n // 2
    parts = np.concatenate([x[:, :half], x[:, half : 2 * half]], axis=0)
    m, n2 = parts.shape[:2]
    means = parts.mean(axis=1)
    w = parts.var(axis=1, ddof=1).mean(axis=0)
    b = n2 * means.var(axis=0, ddof=1)
    var = (n2 - 1) / n2 * w + b / n2
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.nanmax(np.sqrt(var / w)))


def fit_cell(
    x_n,
    x_d,
    run_idx,
    log_loss,
    prior: CellPrior,
    *,
    seed: int = 0,
    chains: int = 2,
    warmup: int = 300,
    draws: int = 300,
    target_accept: float = 0.9,
    max_tree_depth: int = 8,
) -> CellPosterior:
    """NUTS fit of one family's checkpoints under ``prior``.

    Parameters
    ----------
    x_n, x_d : array (n,)
        Centred covariates ``log(N / 1e9)``, ``log(D / 1e11)``.
    run_idx : array of int (n,)
        Run of each checkpoint, 0 .. n_runs - 1.
    log_loss : array (n,)
        Natural log of the observed loss.
    prior : CellPrior
    seed : int
        PRNG seed of the sampler.
    chains, warmup, draws : int
        Chains run sequentially; draws are kept per chain.
    target_accept, max_tree_depth
        NUTS settings.

    Returns
    -------
    CellPosterior
    """
    x_n = np.asarray(x_n, float)
    x_d = np.asarray(x_d, float)
    log_loss = np.asarray(log_loss, float)
    run_idx = np.asarray(run_idx, int)
    n = len(log_loss)
    if n == 0:
        raise ValueError("fit_cell needs at least one checkpoint")
    if not (len(x_n) == len(x_d) == len(run_idx) == n):
        raise ValueError("x_n, x_d, run_idx and log_loss differ in length")
    n_runs = int(run_idx.max()) + 1
    n_pad = _bucket(n, *POINTS_BUCKET)
    r_pad = _bucket(n_runs, *RUNS_BUCKET)

    def pad(a, fill):
        out = np.full(n_pad, fill, dtype=a.dtype)
        out[:n] = a
        return out

    mask = pad(np.ones(n, bool), False)
    args = (
        jnp.asarray(pad(x_n, 0.0)),
        jnp.asarray(pad(x_d, 0.0)),
        jnp.asarray(pad(run_idx, 0)),
        jnp.asarray(mask),
        jnp.asarray(np.arange(r_pad) < n_runs),
        jnp.asarray(prior.loc),
        jnp.asarray(prior.scale_tril),
        jnp.asarray(prior.run_scale[0]),
        jnp.asarray(prior.run_scale[1]),
        jnp.asarray(prior.noise_scale[0]),
        jnp.asarray(prior.noise_scale[1]),
        jnp.asarray(prior.nu),
        *(jnp.asarray(v) for v in prior.shape_args()),
        jnp.asarray(pad(log_loss, 0.0)),
    )
    sampler = _sampler(
        prior.kind, n_pad, r_pad, int(chains), int(warmup), int(draws), float(target_accept), int(max_tree_depth)
    )
    theta, sigma_run, sigma_obs, sigma_size, diverging = sampler(jax.random.PRNGKey(int(seed) % (2**31)), *args)
    theta = np.asarray(theta)
    diverging = np.asarray(diverging)
    return CellPosterior(
        theta=theta.reshape(-1, N_PARAMS),
        sigma_run=np.asarray(sigma_run).reshape(-1),
        sigma_obs=np.asarray(sigma_obs).reshape(-1),
        nu=float(prior.nu),
        divergences=int(diverging.sum()),
        max_rhat=_split_rhat(theta),
        sigma_size=np.asarray(sigma_size).reshape(-1) if prior.size_term else None,
        size_anchor=float(x_n.max()),
    )



def _pooled_scales(posteriors) -> dict:
    """Scale priors for a new family: log-normals matched to the pooled draws of ``sigma_run``,
    ``sigma_obs`` and (when every posterior has one) ``sigma_size``."""
    sized = all(p.sigma_size is not None for p in posteriors)
    return dict(
        scale_kind="lognormal",
        run_scale=_lognormal_match(np.concatenate([p.sigma_run for p in posteriors])),
        noise_scale=_lognormal_match(np.concatenate([p.sigma_obs for p in posteriors])),
        nu=float(posteriors[0].nu),
        size_scale=_lognormal_match(np.concatenate([p.sigma_size for p in posteriors])) if sized else None,
    )


def _family_moments(posteriors) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means (F, 5) and covariances (F, 5, 5) of theta, one per family (at least 2)."""
    posteriors = list(posteriors)
    if len(posteriors) < 2:
        raise ValueError(f"a population prior needs >= 2 family posteriors, got {len(posteriors)}")
    means = np.array([p.theta.mean(axis=0) for p in posteriors])
    covs = np.array([np.cov(p.theta, rowvar=False) for p in posteriors])
    return means, covs


def mixture_prior(posteriors, source: str = "") -> CellPrior:
    """Prior for a new family: the moment-matched mixture of other families' posteriors.

    theta ~ N(mean, cov) with the mean and covariance of the equal-weight mixture of the
    given :class:`CellPosterior` objects (between-family spread of the posterior means plus
    the average within-family posterior covariance); scales as :func:`random_effects_prior`.
    Every family weighs the same, so one whose data cannot pin a parameter (a wide or
    two-mode posterior) moves the mean as much as one that pins it; kept for comparison.
    """
    posteriors = list(posteriors)
    means, covs = _family_moments(posteriors)
    cov = np.cov(means, rowvar=False) * (len(means) - 1) / len(means) + covs.mean(axis=0)
    return CellPrior(
        loc=means.mean(axis=0),
        scale_tril=_tril(cov),
        source=source or f"mixture of {len(posteriors)} family posteriors",
        **_pooled_scales(posteriors),
    )


def random_effects(means, covs, max_iter: int = 10_000, tol: float = 1e-10):
    """Population mean and covariance from noisy per-family estimates (random-effects meta-analysis).

    Model: ``m_f ~ N(theta_f, S_f)``, ``theta_f ~ N(mu, Sigma)``; maximum likelihood of
    ``(mu, Sigma)`` by EM (the E-step's ``theta_f | m_f`` is normal, the M-step averages).
    A family weighs by how well it pins each direction: ``Sigma + S_f`` is its covariance.

    Returns
    -------
    mu : ndarray (p,)
    sigma : ndarray (p, p)
        Between-family covariance of theta.
    mu_cov : ndarray (p, p)
        Covariance of the estimate of ``mu`` (``(sum_f (Sigma + S_f)^-1)^-1``).
    """
    means = np.asarray(means, float)
    covs = np.asarray(covs, float)
    n, p = means.shape
    precisions = np.linalg.inv(covs)
    weighted_means = np.einsum("fij,fj->fi", precisions, means)
    mu = means.mean(axis=0)
    sigma = np.cov(means, rowvar=False) + 1e-6 * np.eye(p)
    for _ in range(max_iter):
        sigma_inv = np.linalg.inv(sigma)
        post_cov = np.linalg.inv(sigma_inv[None] + precisions)
        post_mean = np.einsum("fij,fj->fi", post_cov, sigma_inv @ mu + weighted_means)
        new_mu = post_mean.mean(axis=0)
        resid = post_mean - new_mu
        new_sigma = (resid.T @ resid + post_cov.sum(axis=0)) / n
        change = max(np.abs(new_mu - mu).max(), np.abs(new_sigma - sigma).max())
        mu, sigma = new_mu, new_sigma
        if change < tol:
            break
    mu_cov = np.linalg.inv(np.linalg.inv(sigma[None] + covs).sum(axis=0))
    return mu, sigma, mu_cov


def random_effects_prior(posteriors, source: str = "") -> CellPrior:
    """Prior for a new family: the population of theta fitted to other families' posteriors.

    Each family's posterior of theta, read as a normal estimate ``N(mean_f, cov_f)`` of its
    true theta, feeds :func:`random_effects`. The prior is the predictive of a new family's
    theta with the uncertainty of the population carried, not only its best estimate: a
    multivariate Student-t with ``F - 5`` degrees of freedom (F families; at least 1) and
    scale ``Sigma F / (F - 5) + Cov(mu)``. For F families drawn from a normal population
    whose mean and covariance are unknown, that is the predictive under the usual
    noninformative prior (``F - p`` degrees of freedom, scale ``(F + 1) / (F - p)`` times the
    maximum-likelihood covariance; Gelman et al., Bayesian Data Analysis, 3.6); ``Cov(mu)``
    stands in for its ``Sigma / F`` when families pin theta unequally. A family whose
    data leave a direction unpinned (E of a run that has not flattened, a two-mode posterior)
    has a wide ``cov_f`` there and little say in it, unlike in :func:`mixture_prior`, where
    its posterior mean counts as much as any and its width adds to the population's spread.
    ``sigma_run``, ``sigma_obs`` and (when every posterior has one) ``sigma_size`` get
    log-normals matched to the pooled draws. This is the default population of the
    back-test's ``bayes_hierarchical`` (see :mod:`bayes_scaling.backtest`).
    """
    posteriors = list(posteriors)
    means, covs = _family_moments(posteriors)
    mu, sigma, mu_cov = random_effects(means, covs + 1e-9 * np.eye(N_PARAMS))
    df = max(len(posteriors) - N_PARAMS, 1)
    return CellPrior(
        loc=mu,
        scale_tril=_tril(sigma * len(posteriors) / df + mu_cov),
        source=source or f"random effects of {len(posteriors)} family posteriors",
        df=float(df),
        **_pooled_scales(posteriors),
    )


def exponents_only(population: CellPrior, levels: CellPrior) -> CellPrior:
    """``population`` with the loss levels (log E, log A, log B) taken from ``levels`` instead.

    For a family whose loss is in units no other family shares (a normalised curve), the
    levels of other families say nothing; the exponents and the scales on log loss (relative
    noise, run spread, size discrepancy) do not depend on the units and still carry over.
    """
    level = np.isin(PARAM_NAMES, ("log_e", "log_a", "log_b"))
    cov = np.where(np.outer(level, level), levels.cov, 0.0) + np.where(np.outer(~level, ~level), population.cov, 0.0)
    return replace(
        population,
        loc=np.where(level, levels.loc, population.loc),
        scale_tril=_tril(cov),
        source=f"{population.source}; loss levels from {levels.source}",
    )


#: How the back-test turns other families' posteriors into a held-out family's prior.
POPULATION_SUMMARIES = {"random_effects": random_effects_prior, "mixture": mixture_prior}
