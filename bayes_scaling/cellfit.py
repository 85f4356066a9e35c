"""Small single-family NUTS fits with a given prior, compiled once for many back-test cells.

One family at a time: a user's family under a population prior
(:mod:`bayes_scaling.popfit`), each member of a population when it is built
(:mod:`bayes_scaling.population`), every back-test cell. Compiling a NUTS sampler per fit
would cost more than the sampling, so every fit uses *one* small model whose prior arrives
as array arguments:

    theta ~ Normal(loc, scale_tril scale_tril^T)   (sampled in level coordinates, below;
            a multivariate Student-t with that scale when the prior has a finite ``df``)
    sigma_run ~ prior_run,  u_r ~ Normal(0, sigma_run)          (run offsets on log loss)
    sigma_obs ~ prior_obs
    (optional) sigma_size ~ prior_size: u_r ~ Normal(0, sqrt(sigma_run^2 + (sigma_size d_r)^2)),
        d_r = |log N_r - log N of the largest size| (see "Size discrepancy" below)
    log L_i ~ StudentT(nu) or Normal(chinchilla_log_loss(theta) + u_run(i), sigma_obs),
        each checkpoint's log density weighted by w_i (see "Correlated checkpoints")

With ``nu = inf`` (Normal) the offsets u_r are integrated out exactly, as in the joint
model (:class:`bayes_scaling.model.RunMarginalNormal`); with a finite ``nu``
(``chinchilla_independent``: 4, the likelihood of every population fit) the likelihood is
Student-t and the offsets are sampled, ``u_r = sigma_run * z_r``.

The data are padded to a bucket of shapes (points to 64 x 4^j, runs to 8 x 8^j) and
a boolean mask removes the padding from the likelihood; the whole NUTS run is traced under
``jax.jit`` with the data and the prior as traced arguments, so one compiled sampler serves
every fit with the same bucket, prior kind and sampler settings. Padded run offsets are
sampled from their prior and never used.

Priors that feed this model: :func:`independent_prior` (the ``chinchilla_independent``
spec's weak priors: ``bayes_independent`` and a population's member fits) and
:meth:`bayes_scaling.population.Population.prior` (a new family under a population).

Size discrepancy: the Chinchilla form is a model, and a family's losses bend away from it
the further one goes from the sizes it was fitted to (in-sample residuals of classic fits on
the corpus grow with the distance in log N from the middle of a family's sizes). With
``CellPrior.size_scale`` set, a run's offset gets an extra sd ``sigma_size`` per unit of
distance in log N from the *largest* training size: the law is anchored where extrapolation
starts, smaller runs may sit further off it, and a prediction for a larger model inherits a
spread that grows with how far it extrapolates. Without the term, five training sizes pin
the parameters so tightly that intervals at the target are narrower than the law's own
error there. Under a population prior, ``sigma_size``'s prior comes from the
members' extrapolation checks (:func:`bayes_scaling.population.extrapolation_check`), not from
their in-sample fits, which understate it.

Correlated checkpoints: a run's checkpoints err together (its curve bends away from the law
smoothly), so a dense log is not as many independent observations as it has points; each
checkpoint's log density is weighted by :func:`effective_weights` (an AR(1) effective sample
size per run).

Units: covariates centred as in :mod:`bayes_scaling.laws` (``x_n = log(N / 1e9)``,
``x_d = log(D / 1e11)``), loss in nats, scales on natural-log loss.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_median

from .convergence import MAX_R_HAT, MIN_ESS_PER_CHAIN, MIXED_RHAT, max_r_hat, min_ess
from .laws import PARAM_NAMES, chinchilla_log_loss, from_level_coordinates
from .model import LevelMultivariateNormal, RunMarginalNormal
from .programs import traced

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

    def sample_theta(self, rng: np.random.Generator, shape: tuple = ()) -> np.ndarray:
        """Draws of theta (``shape + (5,)``) from this prior: normal, or Student-t with ``df``."""
        z = rng.standard_normal(tuple(shape) + (N_PARAMS,)) @ self.scale_tril.T
        if self.heavy_tailed:
            z = z * np.sqrt(self.df / rng.chisquare(self.df, tuple(shape) + (1,)))
        return self.loc + z

    def sample_scale(self, which: str, rng: np.random.Generator, shape: tuple = ()) -> np.ndarray:
        """NumPy draws of ``sigma_run`` ("run"), ``sigma_obs`` ("noise") or ``sigma_size``
        ("size") from this prior (the distributions of :func:`_scale_dist`)."""
        a, b = {"run": self.run_scale, "noise": self.noise_scale, "size": self.size_scale}[which]
        z = rng.standard_normal(shape)
        return np.exp(a + b * z) if self.scale_kind == "lognormal" else a * np.abs(z)

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


def _tril(cov) -> np.ndarray:
    return np.linalg.cholesky(cov + 1e-9 * np.eye(N_PARAMS))


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


def run_offset_sd(sigma_run, sigma_size, x_n, run_idx, mask, n_runs: int):
    """sd of each run's offset: ``sigma_run``, widened by ``sigma_size`` per unit of log N
    the run sits below the cell's largest size (no size term: ``sigma_size`` None)."""
    run_sd = jnp.full(n_runs, sigma_run)
    if sigma_size is None:
        return run_sd
    return jnp.hypot(run_sd, sigma_size * run_size_distance(x_n, run_idx, mask, n_runs))


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

    def model(x_n, x_d, run_idx, mask, run_mask, loc, scale_tril, run_a, run_b, noise_a, noise_b, nu, size_a, size_b, prior_df, weight, log_loss=None):
        x_n0, x_d0 = data_centre(x_n, x_d, mask)
        level = numpyro.sample("theta_level", LevelMultivariateNormal(loc, scale_tril, x_n0, x_d0, df=prior_df if heavy_tailed else None))
        theta = numpyro.deterministic("theta", from_level_coordinates(level, x_n0, x_d0))
        sigma_run = numpyro.sample("sigma_run", _scale_dist(scale_kind, run_a, run_b))
        sigma_obs = numpyro.sample("sigma_obs", _scale_dist(scale_kind, noise_a, noise_b))
        n_runs = run_mask.shape[0]
        sigma_size = numpyro.sample("sigma_size", _scale_dist(scale_kind, size_a, size_b)) if size_term else None
        run_sd = run_offset_sd(sigma_run, sigma_size, x_n, run_idx, mask, n_runs)
        mean = chinchilla_log_loss(x_n, x_d, *[theta[i] for i in range(N_PARAMS)])
        if marginal:
            numpyro.sample(
                "log_loss", RunMarginalNormal(mean, run_idx, jnp.full(n_runs, sigma_obs), run_sd, weight=weight * mask), obs=log_loss
            )
            return
        run_z = numpyro.sample("run_z", dist.Normal(0.0, 1.0).expand([n_runs]).to_event(1))
        run_offset = numpyro.deterministic("run_offset", run_sd * run_z)
        mean = mean + run_offset[run_idx]
        with numpyro.handlers.scale(scale=weight):  # padded checkpoints: weight 1, masked out
            numpyro.sample("log_loss", dist.StudentT(nu, mean, sigma_obs).mask(mask), obs=log_loss)

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
    continued: bool = False,
):
    """One compiled sampler per shape bucket and setting: ``f(rng_key, *model_args)`` ->
    ``(draws, state)``: every iteration's draws after warmup (theta, sigma_run, sigma_obs,
    sigma_size, run_offset, energy, num_steps, diverging), with a leading axis of chains, and
    the chains' final sampler states as a list of arrays. With ``continued`` the program is
    ``f(state, *model_args)``: ``draws`` more iterations from such states, no warmup, which
    are exactly the iterations one longer run would have made (:func:`fit_cell`'s retry).

    The whole NUTS run of one chain (init, warmup, sampling) is traced as one program with
    the model arguments as traced inputs, so a second call with arrays of the same shapes
    reuses the compiled executable. (``MCMC(jit_model_args=True)`` re-compiled its sampling
    loop on every ``run`` here, a compilation per cell.) The traced program
    is kept on disk (:func:`bayes_scaling.programs.traced`). Chains run on one device each
    when there are enough (``numpyro.set_host_device_count`` on a CPU), else vectorised on
    one: a vectorised NUTS steps its chains in lockstep, each iteration as long as the
    deepest tree among them.
    """

    size_term = kind[2]
    kernel = functools.partial(
        NUTS,
        _model(*kind),
        dense_mass=[dense_sites(size_term)],
        target_accept_prob=target_accept,
        max_tree_depth=max_tree_depth,
        init_strategy=init_to_median(num_samples=15),
    )

    def sample(nuts, rng_key, args, state=None):
        mcmc = MCMC(nuts, num_warmup=warmup, num_samples=draws, num_chains=1, progress_bar=False)
        mcmc.post_warmup_state = state  # None: init and warmup first
        mcmc.run(rng_key, *args, extra_fields=("energy", "num_steps", "diverging"))
        samples = mcmc.get_samples()
        sigma_size = samples["sigma_size"] if size_term else jnp.zeros_like(samples["sigma_run"])
        # integrated out under the Normal likelihood: no draws of the offsets (zeros)
        run_offset = jnp.zeros(samples["sigma_run"].shape + (n_runs,)) if kind[1] else samples["run_offset"]
        extra = mcmc.get_extra_fields()
        out = (samples["theta"], samples["sigma_run"], samples["sigma_obs"], sigma_size, run_offset, extra["energy"], extra["num_steps"], extra["diverging"])
        return out, jax.tree.leaves(mcmc.last_state)

    def one_chain(rng_key, args):
        return sample(kernel(), rng_key, args)

    def continue_chain(state_leaves, args):
        nuts = kernel()
        # the kernel's init sets up its sampling step; of its state only the structure is used
        structure = jax.tree.structure(nuts.init(jax.random.PRNGKey(0), warmup, None, model_args=args))
        state = jax.tree.unflatten(structure, state_leaves)
        return sample(nuts, state.rng_key, args, state)

    settings = f"{'-'.join(map(str, kind))}-{n_points}-{n_runs}-{warmup}-{draws}-{target_accept}-{max_tree_depth}"
    fn, name = (continue_chain, f"cell-{settings}-continued") if continued else (one_chain, f"cell-{settings}")
    if chains > 1 and jax.local_device_count() >= chains:
        mapped = jax.pmap(traced(fn, name), in_axes=(0, None), devices=jax.local_devices()[:chains])
    else:
        mapped = jax.jit(traced(jax.vmap(fn, in_axes=(0, None)), f"{name}-x{chains}"))

    def run(start, *args):
        return mapped(start if continued else jax.random.split(start, chains), args)

    return run


def thinned(first: tuple, more: tuple, thinning: int) -> tuple:
    """Every ``thinning``-th iteration of a run and its continuation, ``(draws, diverging)``
    arrays with axes (chains, iterations, ...): a kept draw counts as divergent if any
    iteration since the previous kept one diverged (NumPyro's own thinning drops those)."""
    *draws, diverging = (np.concatenate([np.asarray(a), np.asarray(b)], axis=1) for a, b in zip(first, more))
    chains, iterations = diverging.shape
    kept = [d[:, thinning - 1 :: thinning] for d in draws]
    return (*kept, diverging.reshape(chains, iterations // thinning, thinning).any(axis=2))


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
        Largest r-hat over theta and the scales (:func:`family_r_hat`; NaN with a single chain).
    sigma_size : ndarray (S,) or None
        Size discrepancy per unit of log N (None: the fit had no size term).
    size_anchor : float
        Largest training size in centred log N, where that distance is 0.
    chains : int
        Chains the S draws come from, in order (``S = chains x draws``).
    run_offset : ndarray (S, runs) or None
        Draws of each training run's offset on log loss (None: not recorded; zeros when the
        Normal likelihood integrated them out).
    diverging : ndarray of bool (S,) or None
        Which draws ended in a divergent transition (None: not recorded).
    energy : ndarray (S,) or None
        Hamiltonian energy of each draw, for E-BFMI (None: not recorded, or the draws are
        thinned, whose energy differences span several transitions and would flatter E-BFMI).
    tree_depth : ndarray of int (S,) or None
        NUTS tree depth of each draw's transition (None: not recorded).
    retried : bool
        The first fit's r_hat was too high or its ESS too low, and these draws come from its retry
        (``retry_thinning`` of :func:`fit_cell`): every ``retry_thinning``-th iteration of its
        chains carried on, or, when ``tempered``, a replica exchange.
    tempered : bool
        The draws are the power-1 chains of a replica exchange (``tempering`` of :func:`fit_cell`,
        :func:`bayes_scaling.batched.fit_tempered`).
    """

    theta: np.ndarray
    sigma_run: np.ndarray
    sigma_obs: np.ndarray
    nu: float
    divergences: int
    max_rhat: float
    sigma_size: np.ndarray | None = None
    size_anchor: float = 0.0
    chains: int = 1
    run_offset: np.ndarray | None = None
    diverging: np.ndarray | None = None
    energy: np.ndarray | None = None
    tree_depth: np.ndarray | None = None
    retried: bool = False
    tempered: bool = False

    def by_chain(self, values: np.ndarray) -> np.ndarray:
        """``values`` with leading axis S reshaped to (chains, draws, ...)."""
        return values.reshape(self.chains, -1, *values.shape[1:])

    def log_law(self, x_n, x_d) -> np.ndarray:
        """Log loss of the law (no run offset or noise) per draw at centred covariates, (S, points)."""
        x_n, x_d = np.asarray(x_n, float), np.asarray(x_d, float)
        th = self.theta
        return np.asarray(chinchilla_log_loss(x_n[None, :], x_d[None, :], *[th[:, i : i + 1] for i in range(N_PARAMS)]))

    def predict_new_run(self, x_n, x_d, seed: int = 0, observation_noise: bool = True) -> np.ndarray:
        """Loss draws (S, points) at centred covariates for a run not in the data.

        Each draw adds one run offset ``u ~ Normal(0, sigma_run)`` shared by all points
        (they belong to one new run; with a size term its sd is
        ``sqrt(sigma_run^2 + (sigma_size |x_n - size_anchor|)^2)``) and, with ``observation_noise``, independent noise per
        point (Student-t, or Normal when ``nu`` is inf): the distribution of a *measured*
        checkpoint loss (nats).
        """
        x_n = np.asarray(x_n, float)
        rng = np.random.default_rng(seed)
        log_mean = self.log_law(x_n, x_d)
        run_sd = self.sigma_run[:, None]
        if self.sigma_size is not None:
            run_sd = np.hypot(run_sd, self.sigma_size[:, None] * np.abs(x_n[None, :] - self.size_anchor))
        log_mean = log_mean + run_sd * rng.standard_normal(len(self.theta))[:, None]
        if observation_noise:
            noise = rng.standard_t(self.nu, size=log_mean.shape) if math.isfinite(self.nu) else rng.standard_normal(log_mean.shape)
            log_mean = log_mean + self.sigma_obs[:, None] * noise
        return np.exp(log_mean)


def noise_variance(sigma_obs, nu: float) -> np.ndarray:
    """Variance of one checkpoint's noise of scale ``sigma_obs``: ``nu / (nu - 2)`` sigma_obs^2
    for a Student-t likelihood with ``nu > 2``, sigma_obs^2 otherwise (Normal for nu <= 2)."""
    factor = nu / (nu - 2.0) if math.isfinite(nu) and nu > 2 else 1.0
    return factor * np.asarray(sigma_obs, float) ** 2


def family_r_hat(chains: int, theta, sigma_run, sigma_obs, sigma_size=None) -> float:
    """The package's r_hat (:func:`bayes_scaling.convergence.max_r_hat`, what ``fit`` reports)
    of a cell fit's family parameters, from draws flat over ``chains`` (NaN with one chain)."""
    return max_r_hat(_family_draws(chains, theta, sigma_run, sigma_obs, sigma_size))


def _family_draws(chains: int, theta, sigma_run, sigma_obs, sigma_size=None) -> dict[str, np.ndarray]:
    """The quantities ``fit`` checks for convergence, shaped ``(chains, draws, ...)``."""
    sites = {"theta": theta, "sigma_run": sigma_run, "sigma_obs": sigma_obs}
    if sigma_size is not None:
        sites["sigma_size"] = sigma_size
    return {name: np.asarray(v).reshape(chains, -1, *np.shape(v)[1:]) for name, v in sites.items()}


#: Sampler settings of every single-family fit under a population (a user's ``fit`` with a
#: population, the back-test's Bayesian cells; a population's member fits take their warmup
#: and draws from ``population.BUILD_DEFAULTS`` and do not retry). With 300 +
#: 300 draws per chain half of the back-test's cells had r_hat > 1.2 and their intervals
#: missed targets that longer chains covered (benchmarks/results/backtest_mixing.md).
#: ``retry_thinning``: a fit whose r_hat is above :data:`~bayes_scaling.convergence.MAX_R_HAT`,
#: or whose ESS is below :data:`~bayes_scaling.convergence.MIN_ESS_PER_CHAIN` per chain
#: (:func:`needs_retry`), is carried on, once, to ``retry_thinning`` times the iterations after
#: warmup (its chains continue from where they stopped), keeping every ``retry_thinning``-th
#: draw (1: never).
#: Most cells with r_hat between 1.01 and 1.05 only need longer chains; a fit that mixes at
#: once pays nothing.
SAMPLER_DEFAULTS = dict(chains=2, warmup=1000, draws=1000, target_accept=0.9, max_tree_depth=8, retry_thinning=3)

#: Likelihood powers of the opt-in retry (``tempering``) of a fit whose chains sit in different
#: places (r_hat above :data:`~bayes_scaling.convergence.MIXED_RHAT`): a replica exchange
#: (parallel tempering) of NUTS chains, each chain of the fit one ladder, the draws at power 1
#: kept. Such fits are mostly law parameters with two separate modes (an isoFLOP sweep's
#: nearly constant D term against a steep one), which longer chains never join; at power 0.3
#: every unmixed back-test cell of seed 0 had one mode, and the rungs in between let states
#: cross. Not the default: it mixed those cells but lowered the back-test's coverage
#: (``benchmarks/EXPERIMENTS.md``).
TEMPERATURES = (1.0, 0.8, 0.64, 0.5, 0.4, 0.3)


def effective_weights(x_n, x_d, run_idx, log_loss) -> np.ndarray:
    """Likelihood weight of each checkpoint: a run's correlated checkpoints count as fewer points.

    Residuals of a run's checkpoints from the law are not independent: a run's curve bends
    away from the Chinchilla form smoothly, so neighbouring checkpoints err together, and a
    dense log treated as independent points pins the law far more tightly than the data can.
    With lag-1 autocorrelation rho of the residuals along a run (checkpoints in token order),
    n checkpoints carry about ``n (1 - rho) / (1 + rho)`` independent points (the AR(1)
    effective sample size). rho is estimated from the residuals of a robust point fit of these
    checkpoints (:func:`bayes_scaling.pointfit.fit_classic_huber`), pooled over the runs with at
    least 3 checkpoints and clipped to [0, 0.99]; each checkpoint of a run of n gets weight
    ``max((1 - rho) / (1 + rho), 1 / n)`` (a run counts at least as one point). Weight 1
    everywhere when rho is not positive or the point fit fails.

    Parameters
    ----------
    x_n, x_d : array (n,)
        Centred covariates (:func:`bayes_scaling.laws.centre`).
    run_idx : array of int (n,)
    log_loss : array (n,)

    Returns
    -------
    ndarray (n,)
        Weights in (0, 1].
    """
    from .laws import REFERENCE_PARAMS, REFERENCE_TOKENS
    from .pointfit import fit_classic_huber

    x_n, x_d, log_loss = (np.asarray(a, float) for a in (x_n, x_d, log_loss))
    run_idx = np.asarray(run_idx, int)
    counts = np.bincount(run_idx)
    weights = np.ones(len(log_loss))
    if counts.max() < 3:
        return weights
    n, d = REFERENCE_PARAMS * np.exp(x_n), REFERENCE_TOKENS * np.exp(x_d)
    fit = fit_classic_huber(n, d, np.exp(log_loss))
    if not fit.ok:
        return weights
    resid = log_loss - np.log(fit.predict(n, d))
    lagged, total = 0.0, 0.0
    for r in np.flatnonzero(counts >= 3):
        e = resid[run_idx == r][np.argsort(x_d[run_idx == r])]
        e = e - e.mean()  # the run's offset is a parameter of its own, not correlation
        lagged += float(np.sum(e[1:] * e[:-1]))
        total += float(np.sum(e**2))
    rho = float(np.clip(lagged / total, 0.0, 0.99)) if total > 0 else 0.0
    return np.maximum((1 - rho) / (1 + rho), 1.0 / counts[run_idx])


def stable_seed(key: tuple, seed: int) -> int:
    """Seed of one fit in a collection: a hash of its key mixed with the run seed, so that
    the numbers do not depend on the order (or the process) in which fits run."""
    return (zlib.crc32(repr(key).encode()) ^ (int(seed) * 2654435761)) % (2**31)


@dataclass(frozen=True)
class FamilyArrays:
    """One family's checkpoints as cell-model arrays (centred covariates, runs from 0)."""

    x_n: np.ndarray
    x_d: np.ndarray
    run_idx: np.ndarray
    log_loss: np.ndarray
    runs: tuple[str, ...]
    weight: np.ndarray  # likelihood weight per checkpoint (effective_weights)

    @classmethod
    def of(cls, data, family: int) -> "FamilyArrays":
        """Family number ``family`` of a :class:`~bayes_scaling.data.RunsData` (its runs are
        contiguous in the run index, see :func:`bayes_scaling.data.prepare`)."""
        rows = np.flatnonzero(data.family_idx == family)
        first = int(data.run_idx[rows].min())
        run_idx = np.asarray(data.run_idx[rows] - first, int)
        runs = tuple(data.runs[first : first + int(run_idx.max()) + 1])
        return cls.from_arrays(data.x_n[rows], data.x_d[rows], run_idx, data.log_loss[rows], runs)

    @classmethod
    def from_arrays(cls, x_n, x_d, run_idx, log_loss, runs=None) -> "FamilyArrays":
        """Arrays of one family (runs numbered from 0), weighted by :func:`effective_weights`."""
        x_n, x_d, log_loss = (np.asarray(a, float) for a in (x_n, x_d, log_loss))
        run_idx = np.asarray(run_idx, int)
        runs = tuple(runs) if runs is not None else tuple(str(r) for r in range(int(run_idx.max()) + 1))
        return cls(x_n, x_d, run_idx, log_loss, runs, effective_weights(x_n, x_d, run_idx, log_loss))

    def fit(self, prior: "CellPrior", *, seed: int = 0, **sampler) -> "CellPosterior":
        """:func:`fit_cell` of these checkpoints, with their weights, under ``prior``."""
        return fit_cell(self.x_n, self.x_d, self.run_idx, self.log_loss, prior, weight=self.weight, seed=seed, **sampler)


def model_args(x_n, x_d, run_idx, log_loss, weight, prior: CellPrior, n_pad: int, r_pad: int) -> tuple[np.ndarray, ...]:
    """Arguments of :func:`_model` (NumPy), the checkpoints padded to ``n_pad`` and the runs
    to ``r_pad`` (masks mark the real ones): the one layout :func:`fit_cell` and the batched
    program (:mod:`bayes_scaling.batched`) both feed the compiled model."""
    n = len(log_loss)

    def pad(a, fill):
        a = np.asarray(a)
        out = np.full(n_pad, fill, dtype=a.dtype)
        out[:n] = a
        return out

    return (
        pad(x_n, 0.0),
        pad(x_d, 0.0),
        pad(run_idx, 0),
        pad(np.ones(n, bool), False),
        np.arange(r_pad) < int(np.max(run_idx)) + 1,
        prior.loc,
        prior.scale_tril,
        np.float64(prior.run_scale[0]),
        np.float64(prior.run_scale[1]),
        np.float64(prior.noise_scale[0]),
        np.float64(prior.noise_scale[1]),
        np.float64(prior.nu),
        *(np.float64(v) for v in prior.shape_args()),
        pad(weight, 1.0),
        pad(log_loss, 0.0),
    )


def fit_cell(
    x_n,
    x_d,
    run_idx,
    log_loss,
    prior: CellPrior,
    *,
    weight=None,
    seed: int = 0,
    chains: int = SAMPLER_DEFAULTS["chains"],
    warmup: int = SAMPLER_DEFAULTS["warmup"],
    draws: int = SAMPLER_DEFAULTS["draws"],
    target_accept: float = SAMPLER_DEFAULTS["target_accept"],
    max_tree_depth: int = SAMPLER_DEFAULTS["max_tree_depth"],
    retry_thinning: int = 1,
    tempering: bool = False,
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
    weight : array (n,), optional
        Likelihood weight of each checkpoint in (0, 1] (:func:`effective_weights`); default 1.
    seed : int
        PRNG seed of the sampler.
    chains, warmup, draws : int
        Chains run one per device where there are enough, else vectorised; draws are kept per chain.
    target_accept, max_tree_depth
        NUTS settings.
    retry_thinning : int
        When the fit's r_hat is above :data:`~bayes_scaling.convergence.MAX_R_HAT` or its ESS
        short (:func:`needs_retry`), carry its chains on to this many times the iterations
        after warmup, keeping every ``retry_thinning``-th draw, and return that fit
        (``retried`` is then True); with ``tempering`` and r_hat above
        :data:`~bayes_scaling.convergence.MIXED_RHAT`, fit again instead as a replica exchange
        (same chains, warmup and draws; ``tempered``); 1: never
        (the default here; a user's ``fit`` and the back-test's cells take
        ``SAMPLER_DEFAULTS["retry_thinning"]``, a population's member fits 1).
    tempering : bool
        Opt-in: that replica exchange over :data:`TEMPERATURES`; False (default): every retry
        is carried on.

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
    weight = np.ones(n) if weight is None else np.asarray(weight, float)
    if weight.shape != (n,) or not np.all((weight > 0) & (weight <= 1)):
        raise ValueError("weight must hold one value in (0, 1] per checkpoint")
    n_runs = int(run_idx.max()) + 1
    n_pad = _bucket(n, *POINTS_BUCKET)
    r_pad = _bucket(n_runs, *RUNS_BUCKET)
    if int(retry_thinning) != retry_thinning or retry_thinning < 1:
        raise ValueError(f"retry_thinning must be a positive integer, got {retry_thinning!r}")
    args = tuple(jnp.asarray(a) for a in model_args(x_n, x_d, run_idx, log_loss, weight, prior, n_pad, r_pad))

    sampler = functools.partial(
        _sampler, prior.kind, n_pad, r_pad, int(chains), int(warmup), target_accept=float(target_accept), max_tree_depth=int(max_tree_depth)
    )
    out, state = sampler(int(draws))(jax.random.PRNGKey(int(seed) % (2**31)), *args)
    post = _cell_posterior(out, prior, x_n, n_runs, int(chains), retried=False)
    if not needs_retry(post, retry_thinning):
        return post
    if tempering and needs_tempering(post):
        from .batched import CellProblem, fit_tempered  # batched builds on this module

        problem = CellProblem(x_n, x_d, run_idx, log_loss, prior, seed=seed, weight=weight)
        nuts = dict(chains=int(chains), warmup=int(warmup), draws=int(draws), target_accept=float(target_accept), max_tree_depth=int(max_tree_depth))
        return dataclasses.replace(fit_tempered([problem], TEMPERATURES, **nuts)[0], retried=True)
    # the same chains carried on from where they stopped, as one longer run, then thinned
    more, _ = sampler(int(draws) * (int(retry_thinning) - 1), continued=True)(state, *args)
    return _cell_posterior(thinned(out, more, int(retry_thinning)), prior, x_n, n_runs, int(chains), retried=True)


def needs_retry(post: "CellPosterior", retry_thinning: int) -> bool:
    """Whether a fit is carried on (``retry_thinning`` of :func:`fit_cell` and of the
    batched program), with more than one chain and ``retry_thinning`` above 1: its r_hat is
    above :data:`~bayes_scaling.convergence.MAX_R_HAT`, or its bulk or tail ESS below
    :data:`~bayes_scaling.convergence.MIN_ESS_PER_CHAIN` per chain (the checks of ``fit``'s
    verdict, which longer chains settle alike), or either is not a number (stuck chains)."""
    if retry_thinning <= 1 or post.chains <= 1:
        return False
    if not post.max_rhat <= MAX_R_HAT:
        return True
    draws = _family_draws(post.chains, post.theta, post.sigma_run, post.sigma_obs, post.sigma_size)
    return not min_ess(draws) >= MIN_ESS_PER_CHAIN * post.chains


def needs_tempering(post: "CellPosterior") -> bool:
    """Whether a fit that :func:`needs_retry` is retried as a replica exchange over
    :data:`TEMPERATURES` rather than carried on: its r_hat is above
    :data:`~bayes_scaling.convergence.MIXED_RHAT` (chains in different places), or not a number."""
    return not post.max_rhat <= MIXED_RHAT


def _cell_posterior(out, prior: CellPrior, x_n, n_runs: int, chains: int, retried: bool) -> CellPosterior:
    """A :class:`CellPosterior` from the compiled sampler's outputs."""
    theta, sigma_run, sigma_obs, sigma_size, run_offset, energy, num_steps, diverging = out
    theta = np.asarray(theta).reshape(-1, N_PARAMS)
    sigma_run, sigma_obs = np.asarray(sigma_run).reshape(-1), np.asarray(sigma_obs).reshape(-1)
    sigma_size = np.asarray(sigma_size).reshape(-1) if prior.size_term else None
    diverging = np.asarray(diverging)
    return CellPosterior(
        theta=theta,
        sigma_run=sigma_run,
        sigma_obs=sigma_obs,
        nu=float(prior.nu),
        divergences=int(diverging.sum()),
        max_rhat=family_r_hat(chains, theta, sigma_run, sigma_obs, sigma_size),
        sigma_size=sigma_size,
        size_anchor=float(x_n.max()),
        chains=chains,
        run_offset=np.asarray(run_offset).reshape(len(theta), -1)[:, :n_runs],
        diverging=diverging.reshape(-1).astype(bool),
        energy=None if retried else np.asarray(energy, float).reshape(-1),
        tree_depth=tree_depth(num_steps),
        retried=retried,
    )


def tree_depth(num_steps) -> np.ndarray:
    """NUTS tree depth of transitions from their leapfrog steps, flattened (ArviZ's rule for
    NumPyro's ``num_steps``, so that both fit paths count depth hits alike)."""
    return np.floor(np.log2(np.maximum(np.asarray(num_steps).reshape(-1), 1))).astype(int) + 1


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
