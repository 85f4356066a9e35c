"""NumPyro models built from a :class:`~bayes_scaling.spec.Spec`; the model reads arrays only.

Sample sites and the dimensions they become in InferenceData:

============== ================= ===============================================
site           dims              meaning
============== ================= ===============================================
mu             param             population mean of theta (partial/complete)
tau            param             population sd of theta (partial)
corr_cholesky  param, param_     Cholesky factor of the theta correlation
theta          family, param     (log_e, log_a, log_b, alpha, beta) per family
theta_centred  family_centred,   theta (``family_effects = "centred"``)
               param
theta_z        family_noncentred standardised theta (``family_effects = "noncentred"``)
               , param
theta_level    family_level,     theta in level coordinates at the family's data centre
               level_param       (the default; see ``laws.to_level_coordinates``)
exponent_z     family_hybrid,    standardised (alpha, beta) (``family_effects = "hybrid"``)
               exponent
terms_level    family_hybrid,    the first three level coordinates given the exponents
               level_term        (``family_effects = "hybrid"``)
sigma_run_fitted family_repeated sd of run offsets of families that identify one
sigma_run      family            the same for every family (0 where every run has a
                                 single checkpoint: the noise holds the run spread there)
run_offset     run               shift of one run's log loss (sampled with a Student-t
                                 likelihood; with a Normal one it is integrated out while
                                 sampling and drawn afterwards, see below)
sigma_obs      family            observation noise on log loss (where every run has
                                 one checkpoint it holds the run spread too)
log_loss       checkpoint        observed natural log of the loss
============== ================= ===============================================

With a Normal likelihood the run offsets are integrated out exactly: given theta, the log
losses of one run are jointly Normal with covariance ``sigma_obs**2 I + sigma_run**2 11^T``,
so NUTS explores only the family and population parameters. Offsets confounded with the
law (a shift common to a family's runs equals a shift of log_e, log_a and log_b) made the
sampled version crawl at the maximum tree depth. :func:`draw_run_offsets` then draws them
from their exact conditional posterior, so the posterior is the same as if sampled.

Deterministic sites ``log_e`` ... ``beta`` (dims family) and ``corr`` (param, param_)
make the posterior read as ``alpha.sel(family="pythia")``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from .data import RunsData
from .laws import PARAM_NAMES, chinchilla_log_loss, from_level_coordinates, to_level_coordinates
from .spec import Prior, Spec

N_PARAMS = len(PARAM_NAMES)

_NUMPYRO = {
    "normal": dist.Normal,
    "student_t": dist.StudentT,
    "half_normal": dist.HalfNormal,
    "half_cauchy": dist.HalfCauchy,
    "lognormal": dist.LogNormal,
    "exponential": dist.Exponential,
    "gamma": dist.Gamma,
}


def prior_distribution(priors: Prior | tuple[Prior, ...]) -> dist.Distribution:
    """NumPyro distribution of one prior, or a batch of same-kind priors (one per parameter)."""
    batch = priors if isinstance(priors, tuple) else (priors,)
    names = [name for name, _ in batch[0].args]
    args = {name: jnp.asarray([p.kwargs()[name] for p in batch]) for name in names}
    if not isinstance(priors, tuple):
        args = {name: value[0] for name, value in args.items()}
    return _NUMPYRO[batch[0].dist](**args)


@dataclass(frozen=True)
class ModelInputs:
    """The arrays a model reads: one entry per checkpoint, plus the run -> family map."""

    x_n: np.ndarray
    x_d: np.ndarray
    family_idx: np.ndarray
    run_idx: np.ndarray
    run_family: np.ndarray
    family_x_n: np.ndarray
    family_x_d: np.ndarray
    log_loss: np.ndarray | None = None

    @classmethod
    def from_data(cls, data: RunsData) -> "ModelInputs":
        size_family, size_x_n = _distinct_sizes(data.family_idx, data.x_n)
        n_sizes = np.bincount(size_family)
        return cls(
            x_n=data.x_n,
            x_d=data.x_d,
            family_idx=data.family_idx,
            run_idx=data.run_idx,
            run_family=data.run_family,
            # centre of each family's data: mean x_n over its distinct sizes, mean x_d over its checkpoints
            family_x_n=np.bincount(size_family, weights=size_x_n) / n_sizes,
            family_x_d=np.bincount(data.family_idx, weights=data.x_d) / np.bincount(data.family_idx),
            log_loss=data.log_loss,
        )

    def as_kwargs(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _distinct_sizes(family_idx, x_n):
    """(family of each distinct (family, size) pair, its x_n): each family's sizes counted once."""
    pairs = np.unique(np.stack([np.asarray(family_idx, float), np.asarray(x_n, float)]), axis=1)
    return pairs[0].astype(int), pairs[1]


#: How a family's theta is sampled, per ``family_effects`` ("auto" means "level").
EFFECTS = ("centred", "noncentred", "level", "hybrid")


def family_effects(spec: Spec) -> str:
    """One of :data:`EFFECTS`: how every family's theta is sampled (partial pooling only).

    ``level`` (the default) samples theta in level coordinates at the family's data centre
    (:func:`~bayes_scaling.laws.to_level_coordinates`): the loss level there is pinned by
    the data, how it splits into E, N and D terms often is not. In theta those splits are
    thin curved ridges (E + A/N^alpha = const for one model size), which kept NUTS at its
    maximum tree depth on the corpus.

    ``hybrid`` keeps level coordinates for (log_e, log_a, log_b) and samples the exponents
    non-centred: where data pin a family's exponents weakly, centred exponents make a
    funnel with their population spread (the divergent draws of the synthetic quickstart
    sat at the lowest tau[alpha]). Where data pin them well it mixes worse, so it is not
    the default; ``benchmarks/family_effects.py`` measures both on the notebooks' fits.
    """
    return "level" if spec.family_effects == "auto" else spec.family_effects


class LevelMultivariateNormal(dist.Distribution):
    """theta ~ MultivariateNormal(loc, scale_tril), in level coordinates at ``(x_n0, x_d0)``;
    with ``df``, a multivariate Student-t with that scale instead.

    The map to level coordinates has unit Jacobian, so the density is the base
    distribution's at the mapped-back point.
    """

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale_tril, x_n0, x_d0, df=None, validate_args=None):
        if df is None:
            self.base = dist.MultivariateNormal(loc, scale_tril=scale_tril)
        else:
            self.base = dist.MultivariateStudentT(df, loc, scale_tril)
        self.x_n0, self.x_d0 = x_n0, x_d0
        super().__init__(batch_shape=jnp.shape(x_n0), event_shape=(N_PARAMS,), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        theta = self.base.expand(self.batch_shape).sample(key, sample_shape)
        return to_level_coordinates(theta, self.x_n0, self.x_d0)

    def log_prob(self, value):
        return self.base.log_prob(from_level_coordinates(value, self.x_n0, self.x_d0))


class LevelTermsNormal(dist.Distribution):
    """(log_e, log_a, log_b) ~ MultivariateNormal(loc, scale_tril) given the exponents,
    in the first three level coordinates at ``(x_n0, x_d0)`` (unit Jacobian, as above)."""

    arg_constraints = {}
    support = constraints.real_vector

    def __init__(self, loc, scale_tril, exponents, x_n0, x_d0, validate_args=None):
        self.base = dist.MultivariateNormal(loc, scale_tril=scale_tril)
        self.exponents, self.x_n0, self.x_d0 = exponents, x_n0, x_d0
        super().__init__(batch_shape=jnp.shape(x_n0), event_shape=(3,), validate_args=validate_args)

    def _theta(self, terms):
        return jnp.concatenate([terms, jnp.broadcast_to(self.exponents, terms.shape[:-1] + (2,))], axis=-1)

    def sample(self, key, sample_shape=()):
        terms = self.base.expand(self.batch_shape).sample(key, sample_shape)
        return to_level_coordinates(self._theta(terms), self.x_n0, self.x_d0)[..., :3]

    def log_prob(self, value):
        return self.base.log_prob(from_level_coordinates(self._theta(value), self.x_n0, self.x_d0)[..., :3])


#: Permutation matrix putting theta's exponents first: the Cholesky factor of the reordered
#: covariance holds the exponents' marginal and the other terms' conditional given them.
_EXPONENTS_FIRST = np.eye(N_PARAMS)[[3, 4, 0, 1, 2]]


def _hybrid_theta(mu, scale_tril, x_n0, x_d0):
    """theta with non-centred exponents and level-coordinate terms (inside the family plate)."""
    # a matrix product in scale_tril's dtype, not fancy indexing or a float64 constant: both
    # broke once fit() had switched jax_enable_x64 on and off in the same process
    order = jnp.asarray(_EXPONENTS_FIRST, dtype=scale_tril.dtype)
    chol = jnp.linalg.cholesky(order @ scale_tril @ scale_tril.T @ order.T)
    z = numpyro.sample("exponent_z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    exponents = mu[3:] + z @ chol[:2, :2].T
    loc = mu[:3] + z @ chol[2:, :2].T
    terms = numpyro.sample("terms_level", LevelTermsNormal(loc, chol[2:, 2:], exponents, x_n0, x_d0))
    level = jnp.concatenate([terms, exponents], axis=-1)
    return from_level_coordinates(level, x_n0, x_d0)


def _family_parameters(spec: Spec, n_families: int, family_centre):
    """Sample theta[family, param] under the spec's pooling."""
    mean_prior = prior_distribution(spec.mean_priors).to_event(1)
    if spec.pooling == "none":
        with numpyro.plate("family", n_families):
            return numpyro.sample("theta", mean_prior)
    mu = numpyro.sample("mu", mean_prior)
    if spec.pooling == "complete":
        return numpyro.deterministic("theta", jnp.broadcast_to(mu, (n_families, N_PARAMS)))
    tau = numpyro.sample("tau", prior_distribution(spec.family_scale_priors).to_event(1))
    corr_chol = numpyro.sample(
        "corr_cholesky", dist.LKJCholesky(N_PARAMS, spec.correlation_prior.kwargs()["concentration"])
    )
    numpyro.deterministic("corr", corr_chol @ corr_chol.T)
    scale_tril = tau[:, None] * corr_chol
    effects = family_effects(spec)
    with numpyro.plate(f"family_{effects}", n_families):
        if effects == "centred":
            theta = numpyro.sample("theta_centred", dist.MultivariateNormal(mu, scale_tril=scale_tril))
        elif effects == "noncentred":
            z = numpyro.sample("theta_z", dist.Normal(0.0, 1.0).expand([N_PARAMS]).to_event(1))
            theta = mu + z @ scale_tril.T
        elif effects == "hybrid":
            theta = _hybrid_theta(mu, scale_tril, *(jnp.asarray(c) for c in family_centre))
        else:
            x_n0, x_d0 = (jnp.asarray(c) for c in family_centre)
            coords = numpyro.sample("theta_level", LevelMultivariateNormal(mu, scale_tril, x_n0, x_d0))
            theta = from_level_coordinates(coords, x_n0, x_d0)
    return numpyro.deterministic("theta", theta)


#: Runs with at least this many checkpoints get centred offsets (their data pin the offset
#: down); runs with fewer (final-only isoFLOP points) non-centred ones (offset ~ prior).
MIN_CHECKPOINTS_CENTRED = 3


def centred_runs(run_idx, n_runs: int) -> np.ndarray:
    """Boolean mask: which runs get centred offsets (enough checkpoints to pin them down)."""
    return np.bincount(np.asarray(run_idx), minlength=n_runs) >= MIN_CHECKPOINTS_CENTRED


def repeated_families(run_idx, run_family, n_families: int) -> np.ndarray:
    """Boolean mask: families with at least one run logged at two or more checkpoints.

    Only those identify a run offset apart from the noise: with one checkpoint per run
    (isoFLOP final losses) offset and noise add up to one number per run.
    """
    per_run = np.bincount(np.asarray(run_idx), minlength=len(run_family))
    return np.bincount(np.asarray(run_family)[per_run >= 2], minlength=n_families) > 0


def _run_scale(spec: Spec, repeated: np.ndarray, run_family):
    """Sample sigma_run per family (0 where not ``repeated``); returns it per run.

    Run spread differs by family (seeds only, or whole ablation grids), and one shared
    scale set by the widest family swamped the information in one-checkpoint-per-run
    families. Those families get sigma_run = 0: their noise already holds the run spread
    (a free sigma_run there would be unidentified next to sigma_obs).
    """
    sigma_run = jnp.zeros(len(repeated))
    if repeated.any():
        with numpyro.plate("family_repeated", int(repeated.sum())):
            fitted = numpyro.sample("sigma_run_fitted", prior_distribution(spec.run_scale_prior))
        sigma_run = sigma_run.at[np.flatnonzero(repeated)].set(fitted)
    return numpyro.deterministic("sigma_run", sigma_run)[run_family]


def _noise_prior(spec: Spec, repeated: np.ndarray) -> dist.Distribution:
    """Prior of sigma_obs per family: ``single_checkpoint_noise_scale`` where every run has one checkpoint.

    There sigma_run is 0 and the noise holds the run-to-run spread as well, so its prior is
    that of sqrt(noise^2 + run^2). Under the plain noise prior, a family with fewer points
    than law parameters (porian-*: 3) could fit them exactly at any noise down to 1e-4, and
    NUTS diverged in that funnel (18% of draws with the noise below 1e-3 on the corpus).
    """
    return prior_distribution(tuple(spec.noise_scale_prior if r else spec.single_checkpoint_noise_prior for r in repeated))


def _run_offsets(spec: Spec, run_scale, run_idx):
    """Per-run shift of log loss: centred for well-logged runs, non-centred for the others."""
    n_runs = len(run_scale)
    centred = centred_runs(run_idx, n_runs)
    offset = jnp.zeros(n_runs)
    if centred.any():
        with numpyro.plate("run_centred", int(centred.sum())):
            u = numpyro.sample("run_u", dist.Normal(0.0, run_scale[centred]))
        offset = offset.at[np.flatnonzero(centred)].set(u)
    if not centred.all():
        with numpyro.plate("run_noncentred", int((~centred).sum())):
            z = numpyro.sample("run_z", dist.Normal(0.0, 1.0))
        offset = offset.at[np.flatnonzero(~centred)].set(z * run_scale[~centred])
    return numpyro.deterministic("run_offset", offset)


def _run_moments(resid, run_idx, n_runs: int, weight=None):
    """Per run: number of checkpoints, mean residual and sum of squared deviations from it.

    Two passes instead of sums of squares: in float32 the textbook form
    ``sum e^2 / s^2 - t^2 (sum e)^2 / (s^2 (s^2 + n t^2))`` cancels catastrophically when
    the noise s is tiny next to the offset (s ~ 1e-3 on the corpus), which froze NUTS.
    ``weight`` (0 or 1 per checkpoint) drops padding: a run with no weight counts 0.
    """
    weight = jnp.ones_like(resid) if weight is None else weight
    count = jax.ops.segment_sum(weight, run_idx, n_runs)
    mean = jax.ops.segment_sum(weight * resid, run_idx, n_runs) / jnp.maximum(count, 1.0)
    spread = jax.ops.segment_sum(weight * (resid - mean[run_idx]) ** 2, run_idx, n_runs)
    return count, mean, spread


def run_marginal_log_lik(resid, run_idx, sigma_obs, sigma_run, weight=None):
    """Log density of each run's residuals with its offset integrated out.

    Residuals of run r (n points) ~ Normal(0, s^2 I + t^2 11^T), s = ``sigma_obs[r]``,
    t = ``sigma_run[r]``. By Sherman-Morrison the quadratic form splits into the spread
    around the run's mean residual (noise only) and the mean itself (noise + offset):
    ``sum (e - mean)^2 / s^2 + n mean^2 / (s^2 + n t^2)``. Returns one entry per run (0 for
    a run without checkpoints). ``weight`` (0/1 per checkpoint) masks padded checkpoints.
    """
    count, mean, spread = _run_moments(resid, run_idx, sigma_obs.shape[-1], weight)
    var = sigma_obs**2
    denom = var + count * sigma_run**2
    quad = spread / var + count * mean**2 / denom
    return -0.5 * (count * jnp.log(2 * jnp.pi) + (count - 1) * jnp.log(var) + jnp.log(denom) + quad)


def draw_run_offsets(key, resid, run_idx, sigma_obs, sigma_run):
    """One draw of each run offset from its conditional posterior given the law and scales.

    Offset of run r | residuals ~ Normal(n t^2 mean / (s^2 + n t^2), sd = P^-1/2) with
    precision P = n / s^2 + 1 / t^2 (Normal prior, Normal noise: conjugate); 0 when t = 0.
    """
    count, mean, _ = _run_moments(resid, run_idx, sigma_obs.shape[-1])
    var_run = sigma_run**2
    shrunk = count * var_run * mean / (sigma_obs**2 + count * var_run)
    # posterior sd = 1 / sqrt(n / s^2 + 1 / t^2), written to give 0 (not 0 * inf) when t = 0
    sd = sigma_run * sigma_obs / jnp.sqrt(sigma_obs**2 + count * var_run)
    return shrunk + jax.random.normal(key, shrunk.shape) * sd


class RunMarginalNormal(dist.Distribution):
    """Log loss of every checkpoint: Normal noise plus one Normal offset per run.

    ``log_prob`` integrates the offsets out (:func:`run_marginal_log_lik`); ``sample``
    draws them, so prior predictive checks see the same generative model.
    """

    support = constraints.real_vector

    def __init__(self, mean, run_idx, sigma_obs, sigma_run, weight=None, validate_args=None):
        self.loc, self.run_idx, self.sigma_obs, self.sigma_run = mean, run_idx, sigma_obs, sigma_run
        self.weight = weight  # 0/1 per checkpoint; None: every checkpoint counts
        super().__init__(batch_shape=(), event_shape=jnp.shape(mean), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        key_run, key_obs = jax.random.split(key)
        offset = jax.random.normal(key_run, sample_shape + jnp.shape(self.sigma_run)) * self.sigma_run
        noise = jax.random.normal(key_obs, sample_shape + self.event_shape) * self.sigma_obs[self.run_idx]
        return self.loc + offset[..., self.run_idx] + noise

    def log_prob(self, value):
        return run_marginal_log_lik(value - self.loc, self.run_idx, self.sigma_obs, self.sigma_run, self.weight).sum(-1)


def build_model(spec: Spec):
    """Return the NumPyro model function for ``spec``.

    The returned ``model(x_n, x_d, family_idx, run_idx, run_family, family_x_n, family_x_d,
    log_loss=None)`` takes the fields of :class:`ModelInputs` (``family_x_n``, ``family_x_d``:
    the centre of each family's data, one entry per family); with ``log_loss=None`` it
    samples the prior predictive.
    """

    def model(x_n, x_d, family_idx, run_idx, run_family, family_x_n, family_x_d, log_loss=None):
        n_families = len(family_x_n)
        theta = _family_parameters(spec, n_families, (family_x_n, family_x_d))
        for i, name in enumerate(PARAM_NAMES):
            numpyro.deterministic(name, theta[:, i])
        repeated = repeated_families(run_idx, run_family, n_families)
        run_scale = _run_scale(spec, repeated, run_family) if spec.run_offsets else None
        with numpyro.plate("family", n_families):
            sigma_obs = numpyro.sample("sigma_obs", _noise_prior(spec, repeated))
        th = theta[family_idx]
        mean = chinchilla_log_loss(x_n, x_d, th[:, 0], th[:, 1], th[:, 2], th[:, 3], th[:, 4])
        if spec.marginal_run_offsets:
            numpyro.sample("log_loss", RunMarginalNormal(mean, run_idx, sigma_obs[run_family], run_scale), obs=log_loss)
            return
        if spec.run_offsets:
            mean = mean + _run_offsets(spec, run_scale, run_idx)[run_idx]
        scale = sigma_obs[family_idx]
        if spec.likelihood == "student_t":
            likelihood = dist.StudentT(spec.likelihood_df, mean, scale)
        else:
            likelihood = dist.Normal(mean, scale)
        with numpyro.plate("checkpoint", len(x_n)):
            numpyro.sample("log_loss", likelihood, obs=log_loss)

    return model


#: InferenceData dims of every site (see module docstring).
SITE_DIMS = {
    "mu": ["param"],
    "tau": ["param"],
    "corr_cholesky": ["param", "param_"],
    "corr": ["param", "param_"],
    "theta": ["family", "param"],
    "theta_centred": ["family_centred", "param"],
    "theta_z": ["family_noncentred", "param"],
    "theta_level": ["family_level", "level_param"],
    "exponent_z": ["family_hybrid", "exponent"],
    "terms_level": ["family_hybrid", "level_term"],
    "run_u": ["run_centred"],
    "run_z": ["run_noncentred"],
    "run_offset": ["run"],
    "sigma_run": ["family"],
    "sigma_run_fitted": ["family_repeated"],
    "sigma_obs": ["family"],
    "log_loss": ["checkpoint"],
    **{name: ["family"] for name in PARAM_NAMES},
}


def site_dims(spec: Spec) -> dict[str, list[str]]:
    """Dims per site for ``arviz.from_numpyro``."""
    return dict(SITE_DIMS)
