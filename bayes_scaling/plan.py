"""Which run to train next: preposterior analysis of candidate pilot runs, per FLOP.

Given posterior draws of one family's law (from a :class:`~bayes_scaling.inference.Fit`
or a single-family cell fit), :func:`next_run` asks of every candidate run (size N, tokens
D, number of seeds): if we trained it, how wide would the 90% interval of the target's loss
be afterwards, on average over what the run could show? And how much narrower is that per
FLOP spent?

For each candidate the answer is a Monte Carlo preposterior expectation:

1. simulate the candidate's loss curves from the posterior predictive of new runs (a draw
   of the law, a fresh run offset per seed, checkpoint noise), ``n_outcomes`` times;
2. update the posterior by importance re-weighting of the existing draws: the weight of
   draw s is the likelihood of the simulated curves under it, with each run's offset
   integrated out (given the law, a run's log losses are jointly Normal with covariance
   ``sigma_obs^2 I + sd_run^2 11^T``; closed form for a Normal likelihood, adaptive
   Gauss-Hermite quadrature over the offset for a Student-t one);
3. the target's predictive under the weighted draws is a weighted mixture of log-normals
   (law at the target plus a new run's offset, optionally checkpoint noise); its 90%
   interval comes from the mixture's quantiles, its width is relative to its median.

The expected width is the mean over outcomes. Re-weighting never moves a draw, so a
candidate that pins the law far more tightly than the current posterior leaves few draws
with weight: the effective sample size (``ess``: ``(sum w)^2 / sum w^2`` per outcome) is
reported per candidate (mean, minimum, and the share of outcomes below ``min_ess``), and a
candidate with more than :data:`MAX_LOW_ESS_SHARE` of its outcomes below ``min_ess`` is
flagged ``ess_low``: in those outcomes the weights sit on a handful of draws, the width after
them is far too narrow, and the expected width is optimistic (ranking it high is still
informative; how much it gains is not known well).

Size discrepancy: cell fits (:mod:`bayes_scaling.cellfit`) give a run's offset an extra sd
``sigma_size x |log N - log N of the largest training size|``. A candidate larger than
every training run moves that anchor, so the target's offset sd after it is computed from
the new anchor; the offsets of the existing runs, whose distances would grow in a real
refit, are not revisited (an approximation; ``benchmarks/results/next_run.md`` measures it
against real refits).

Units: N in parameters, D in tokens (plain counts), loss in nats, widths relative to the
predicted median loss, costs in FLOPs (``6 N D`` by default; any ``cost(N, D)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import special

from .cellfit import noise_variance
from .decide import six_nd
from .errors import DataError, FitError
from .laws import PARAM_NAMES, REFERENCE_PARAMS, REFERENCE_TOKENS

__all__ = [
    "Candidate",
    "NextRunResult",
    "PlanDraws",
    "anchor_after",
    "candidates_from_table",
    "default_candidates",
    "draws_from_cell",
    "draws_from_fit",
    "effective_sample_size",
    "importance_weights",
    "next_run",
    "observed_weights",
    "run_log_likelihood",
    "simulate_and_weigh",
    "target_width",
]

#: Central interval whose width is planned for.
INTERVAL = 0.9
#: Effective sample size below which an outcome's re-weighted posterior is unreliable, and
#: the share of such outcomes above which a candidate is flagged ``ess_low``.
MIN_ESS = 30.0
MAX_LOW_ESS_SHARE = 0.1
#: Gauss-Hermite nodes over a run's offset for a Student-t likelihood.
QUADRATURE_NODES = 24
#: Default candidate grid: sizes from the family's smallest run to the target, and tokens
#: per parameter as multiples of the target's.
DEFAULT_N_SIZES = 6
DEFAULT_TOKEN_MULTIPLIERS = (0.5, 1.0, 2.0)
#: Default checkpoints of a simulated run: log-spaced from this fraction of its tokens.
DEFAULT_CHECKPOINTS = 8
DEFAULT_FIRST_CHECKPOINT = 0.1

CostFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class PlanDraws:
    """Posterior draws of one family's law and scales, flat over chains (plain NumPy).

    Attributes
    ----------
    theta : ndarray (S, 5)
        ``(log_e, log_a, log_b, alpha, beta)`` per draw, centred units (:mod:`bayes_scaling.laws`).
    sigma_run, sigma_obs : ndarray (S,)
        Run-offset sd and checkpoint-noise scale on log loss.
    nu : float
        Student-t degrees of freedom of the likelihood; ``math.inf``: Normal.
    sigma_size : ndarray (S,) or None
        Size discrepancy per unit of log N (cell fits); None: none.
    size_anchor : float
        Largest training size in centred log N (where the size discrepancy is 0).
    existing_runs : DataFrame
        The family's training runs, columns ``num_params, tokens`` (last checkpoint): their
        compute is the pilot compute spent so far.
    reference_params, reference_tokens : float
        Reference points of the centred covariates.
    """

    theta: np.ndarray
    sigma_run: np.ndarray
    sigma_obs: np.ndarray
    nu: float = math.inf
    sigma_size: np.ndarray | None = None
    size_anchor: float = 0.0
    existing_runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["num_params", "tokens"]))
    reference_params: float = REFERENCE_PARAMS
    reference_tokens: float = REFERENCE_TOKENS

    def __post_init__(self):
        theta = np.asarray(self.theta, float)
        if theta.ndim != 2 or theta.shape[1] != len(PARAM_NAMES) or len(theta) < 2:
            raise FitError(f"theta must be (draws >= 2, 5), got shape {theta.shape}")
        object.__setattr__(self, "theta", theta)
        for name in ("sigma_run", "sigma_obs", "sigma_size"):
            value = getattr(self, name)
            if value is None:
                continue
            value = np.broadcast_to(np.asarray(value, float), (len(theta),)).copy()
            if not np.all(np.isfinite(value) & (value >= 0)):
                raise FitError(f"{name} must be finite and >= 0 for every draw")
            object.__setattr__(self, name, value)
        if not self.nu > 0:
            raise FitError(f"nu must be > 0 (math.inf: Normal), got {self.nu!r}")

    @property
    def n_draws(self) -> int:
        return len(self.theta)

    def centre(self, num_params, tokens) -> tuple[np.ndarray, np.ndarray]:
        return (np.log(np.asarray(num_params, float) / self.reference_params), np.log(np.asarray(tokens, float) / self.reference_tokens))

    def log_law(self, x_n, x_d) -> np.ndarray:
        """Log loss of the law (no run offset) at centred covariates, shape (S, points)."""
        th = self.theta
        x_n, x_d = np.atleast_1d(x_n)[None, :], np.atleast_1d(x_d)[None, :]
        terms = np.logaddexp(th[:, 0:1], th[:, 1:2] - th[:, 3:4] * x_n)
        return np.logaddexp(terms, th[:, 2:3] - th[:, 4:5] * x_d)

    def run_sd(self, x_n: float, anchor: float | None = None) -> np.ndarray:
        """Per-draw sd of the offset of a run at centred log size ``x_n``."""
        if self.sigma_size is None:
            return self.sigma_run
        anchor = self.size_anchor if anchor is None else anchor
        return np.hypot(self.sigma_run, self.sigma_size * abs(float(x_n) - anchor))

    def noise_variance(self) -> np.ndarray:
        """Per-draw variance of one checkpoint's noise (Student-t: ``nu / (nu - 2)`` scale^2; Normal for nu <= 2)."""
        return noise_variance(self.sigma_obs, self.nu)


def _existing_flops(draws: PlanDraws, cost: CostFn) -> float:
    runs = draws.existing_runs
    if runs is None or len(runs) == 0:
        return 0.0
    return float(np.sum(_costs(cost, runs["num_params"].to_numpy(float), runs["tokens"].to_numpy(float))))


def draws_from_fit(fit, family: str) -> PlanDraws:
    """:class:`PlanDraws` of ``family`` from a :class:`~bayes_scaling.inference.Fit`: the joint
    model's, or one under a population, with its size discrepancy as ``predict_loss`` uses it."""
    from .predict import _sigma_run, _size_discrepancy

    f = fit.require_family(family)
    post = fit.idata.posterior
    theta = post["theta"].isel(family=f).transpose("chain", "draw", "param").values.reshape(-1, len(PARAM_NAMES))
    sigma_obs = post["sigma_obs"].isel(family=f).values.reshape(-1)
    sigma_run = _sigma_run(fit, f, np.random.default_rng(0)).reshape(-1)
    sigma_size, size_anchor = _size_discrepancy(fit, f)  # None for a joint-model fit
    sigma_size = None if sigma_size is None else sigma_size.reshape(-1)
    spec = fit.spec
    nu = float(spec.likelihood_df) if spec.likelihood == "student_t" else math.inf
    const = fit.idata.constant_data
    mine = const["family_idx"].values == f
    table = pd.DataFrame({"run": const["run_idx"].values[mine], "num_params": const["num_params"].values[mine], "tokens": const["tokens"].values[mine]})
    existing = table.groupby("run").agg(num_params=("num_params", "first"), tokens=("tokens", "max")).reset_index(drop=True)
    return PlanDraws(
        theta=theta,
        sigma_run=sigma_run,
        sigma_obs=sigma_obs,
        nu=nu,
        sigma_size=sigma_size,
        size_anchor=size_anchor,
        existing_runs=existing,
        reference_params=spec.reference_params,
        reference_tokens=spec.reference_tokens,
    )


def draws_from_cell(posterior, existing_runs: pd.DataFrame) -> PlanDraws:
    """:class:`PlanDraws` from a :class:`~bayes_scaling.cellfit.CellPosterior` and its training runs
    (columns ``num_params, tokens``: each run's last checkpoint)."""
    return PlanDraws(
        theta=posterior.theta,
        sigma_run=posterior.sigma_run,
        sigma_obs=posterior.sigma_obs,
        nu=float(posterior.nu),
        sigma_size=posterior.sigma_size,
        size_anchor=float(posterior.size_anchor),
        existing_runs=existing_runs[["num_params", "tokens"]].reset_index(drop=True),
    )


@dataclass(frozen=True)
class Candidate:
    """A pilot run (or several seeds of it) one could train next.

    Attributes
    ----------
    label : str
    runs : tuple of (float, ndarray)
        One ``(num_params, checkpoint tokens)`` pair per run (a seed is one run); the run's
        compute is ``cost(num_params, last checkpoint's tokens)``.
    """

    label: str
    runs: tuple

    def __post_init__(self):
        runs = []
        for n, tokens in self.runs:
            tokens = np.sort(np.atleast_1d(np.asarray(tokens, float)))
            if not (np.isfinite(n) and n > 0) or tokens.size == 0 or not np.all(np.isfinite(tokens) & (tokens > 0)):
                raise DataError(f"candidate {self.label!r}: num_params and checkpoint tokens must be finite and > 0")
            runs.append((float(n), tokens))
        if not runs:
            raise DataError(f"candidate {self.label!r} has no runs")
        object.__setattr__(self, "runs", tuple(runs))

    @property
    def num_params(self) -> float:
        return max(n for n, _ in self.runs)

    @property
    def tokens(self) -> float:
        return max(float(t[-1]) for _, t in self.runs)

    def flops(self, cost: CostFn = six_nd) -> float:
        return float(sum(_costs(cost, np.array([n]), np.array([t[-1]]))[0] for n, t in self.runs))


def _costs(cost: CostFn, num_params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    values = np.asarray(cost(num_params, tokens), float)
    if values.shape != np.shape(num_params) or not np.all(np.isfinite(values) & (values > 0)):
        raise DataError(f"cost(N, D) must return finite values > 0 shaped like its inputs, got {values!r}")
    return values


def _checkpoints(tokens: float, checkpoints: int, first_checkpoint: float, min_tokens: float) -> np.ndarray:
    grid = np.geomspace(max(first_checkpoint * tokens, min_tokens), tokens, checkpoints) if tokens > min_tokens else np.array([tokens])
    return np.unique(grid)


def candidates_from_table(
    table: pd.DataFrame,
    *,
    checkpoints: int = DEFAULT_CHECKPOINTS,
    first_checkpoint: float = DEFAULT_FIRST_CHECKPOINT,
    min_tokens: float = 0.0,
) -> list[Candidate]:
    """Candidates from a table with columns ``num_params, tokens`` and optionally ``seeds``
    (runs of that configuration, default 1) and ``label``.

    Each run is observed at ``checkpoints`` log-spaced checkpoints from
    ``max(first_checkpoint * tokens, min_tokens)`` to ``tokens`` (the fit's token cut drops
    earlier ones; a run shorter than the cut keeps its last checkpoint).
    """
    missing = [c for c in ("num_params", "tokens") if c not in table.columns]
    if missing:
        raise DataError(f"candidates table lacks column(s) {missing}; needs num_params, tokens (and optionally seeds, label)")
    if len(table) == 0:
        raise DataError("candidates table is empty")
    if int(checkpoints) < 1 or not 0 < first_checkpoint <= 1:
        raise DataError(f"checkpoints must be >= 1 and first_checkpoint in (0, 1], got {checkpoints!r}, {first_checkpoint!r}")
    out = []
    for i, row in enumerate(table.itertuples(index=False)):
        row = row._asdict()
        n, d = float(row["num_params"]), float(row["tokens"])
        seeds = row.get("seeds", 1)
        if not (np.isfinite(n) and n > 0 and np.isfinite(d) and d > 0):
            raise DataError(f"candidates row {i}: num_params and tokens must be finite and > 0, got {n!r}, {d!r}")
        if not (float(seeds) == int(seeds) and int(seeds) >= 1):
            raise DataError(f"candidates row {i}: seeds must be a positive integer, got {seeds!r}")
        label = str(row.get("label") or f"N={n:.3g} D={d:.3g}" + (f" x{int(seeds)}" if int(seeds) > 1 else ""))
        grid = _checkpoints(d, int(checkpoints), first_checkpoint, min_tokens)
        out.append(Candidate(label, tuple((n, grid) for _ in range(int(seeds)))))
    return out


def default_candidates(draws: PlanDraws, target_params: float, target_tokens: float, *, n_sizes: int = DEFAULT_N_SIZES, token_multipliers: Sequence[float] = DEFAULT_TOKEN_MULTIPLIERS, **kwargs) -> list[Candidate]:
    """A grid: ``n_sizes`` sizes log-spaced from the family's smallest run to the target size,
    each at ``token_multipliers`` times the target's tokens per parameter (one seed each).
    ``kwargs`` go to :func:`candidates_from_table`."""
    runs = draws.existing_runs
    smallest = float(runs["num_params"].min()) if len(runs) else target_params / 100.0
    sizes = np.geomspace(min(smallest, target_params), target_params, int(n_sizes))
    ratio = target_tokens / target_params
    table = pd.DataFrame([(n, n * ratio * m) for n in sizes for m in token_multipliers], columns=["num_params", "tokens"])
    return candidates_from_table(table, **kwargs)


# --------------------------------------------------------------------------- maths


def run_log_likelihood(resid: np.ndarray, run_sd: np.ndarray, sigma_obs: np.ndarray, nu: float = math.inf, weight=None) -> np.ndarray:
    """Log likelihood of one run's log-loss residuals from the law, its offset integrated out.

    Parameters
    ----------
    resid : ndarray (..., S, m)
        Observed log loss minus the law's log loss per draw, m checkpoints of one run.
    run_sd, sigma_obs : ndarray (S,)
        Per-draw sd of the run's offset and the noise scale (log loss).
    nu : float
        Student-t degrees of freedom; ``math.inf``: Normal, integrated in closed form
        (covariance ``sigma_obs^2 I + run_sd^2 11^T``); otherwise adaptive Gauss-Hermite
        quadrature over the offset with :data:`QUADRATURE_NODES` nodes.
    weight : ndarray (m,), optional
        Likelihood weight of each checkpoint (a cell fit's effective weights); default 1.

    Returns
    -------
    ndarray (..., S)
    """
    resid = np.asarray(resid, float)
    weight = np.ones(resid.shape[-1]) if weight is None else np.asarray(weight, float)
    total_weight = weight.sum()
    so2, sr2 = np.asarray(sigma_obs, float) ** 2, np.asarray(run_sd, float) ** 2
    if not math.isfinite(nu):
        total = (weight * resid).sum(axis=-1)
        denom = so2 + total_weight * sr2
        quad = (weight * resid**2).sum(axis=-1) / so2 - sr2 * total**2 / (so2 * denom)
        log_det = (total_weight - 1) * np.log(so2) + np.log(denom)
        return -0.5 * (quad + log_det + total_weight * np.log(2 * np.pi))
    # adaptive Gauss-Hermite: nodes around the mode of the offset's conditional posterior,
    # 1.5 times as wide as its curvature there says, so they sit where the likelihood is even
    # when the noise is far below the run spread or one checkpoint is an outlier
    sigma_obs = np.asarray(sigma_obs, float)
    sr2 = np.maximum(sr2, 1e-24)
    mode, precision = _offset_mode(resid, weight, so2, sr2, nu)  # (..., S)
    scale = 1.5 / np.sqrt(precision)
    nodes, node_weights = np.polynomial.hermite.hermgauss(QUADRATURE_NODES)
    offsets = mode[..., None] + np.sqrt(2.0) * scale[..., None] * nodes  # (..., S, K)
    z2 = ((resid[..., None] - offsets[..., None, :]) / sigma_obs[:, None, None]) ** 2  # (..., S, m, K)
    log_norm = special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi) - np.log(sigma_obs)
    log_t = total_weight * log_norm[:, None] - 0.5 * (nu + 1) * (weight[:, None] * np.log1p(z2 / nu)).sum(axis=-2)  # weighted Student-t log density
    log_prior = -0.5 * offsets**2 / sr2[:, None] - 0.5 * np.log(2 * np.pi * sr2)[:, None]
    # u = mode + sqrt(2) scale z: integral = sum_k w_k exp(z_k^2) sqrt(2) scale f(u_k) prior(u_k)
    return special.logsumexp(log_t + log_prior + nodes**2 + np.log(node_weights) + np.log(np.sqrt(2.0) * scale)[..., None], axis=-1)


def _offset_mode(resid, weight, so2, sr2, nu: float, iterations: int = 20):
    """Mode of a run's offset under Student-t noise and its Normal prior, and the precision
    there: iteratively re-weighted least squares (each checkpoint weighs
    ``(nu + 1) / (nu + (e - u)^2 / s^2)``), started at the Normal likelihood's mode."""
    u = (weight * resid).sum(axis=-1) / (weight.sum() + so2 / sr2)
    for _ in range(iterations):
        robust = weight * (nu + 1.0) / (nu + (resid - u[..., None]) ** 2 / so2[:, None])
        precision = robust.sum(axis=-1) / so2 + 1.0 / sr2
        u = (robust * resid).sum(axis=-1) / so2 / precision
    return u, precision


def importance_weights(log_lik: np.ndarray) -> np.ndarray:
    """Normalised weights (sum 1 over the last axis) from per-draw log likelihoods."""
    log_lik = np.asarray(log_lik, float)
    return np.exp(log_lik - special.logsumexp(log_lik, axis=-1, keepdims=True))


def effective_sample_size(weights: np.ndarray) -> np.ndarray:
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` over the last axis."""
    w = np.asarray(weights, float)
    return w.sum(axis=-1) ** 2 / (w**2).sum(axis=-1)


def _mixture_quantiles(weights: np.ndarray, mean: np.ndarray, sd: np.ndarray, probs: Sequence[float], iterations: int = 60) -> np.ndarray:
    """Quantiles of the weighted normal mixture ``sum_s w_s N(mean_s, sd_s^2)``, by bisection.

    weights (J, S) or (S,); returns (len(probs), J) or (len(probs),)."""
    w = np.atleast_2d(weights)
    sd = np.maximum(sd, 1e-12)
    lo0, hi0 = float(np.min(mean - 10 * sd)), float(np.max(mean + 10 * sd))
    out = []
    for p in probs:
        lo, hi = np.full(len(w), lo0), np.full(len(w), hi0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = (w * special.ndtr((mid[:, None] - mean[None, :]) / sd[None, :])).sum(axis=1) < p
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        out.append(0.5 * (lo + hi))
    out = np.array(out)
    return out if np.ndim(weights) == 2 else out[:, 0]


def target_width(draws: PlanDraws, target_params: float, target_tokens: float, weights=None, *, anchor: float | None = None, observation_noise: bool = False, level: float = INTERVAL) -> np.ndarray:
    """Relative width ``(q_hi - q_lo) / median`` of the target's predictive loss interval.

    The predictive of a new run at the target under (weighted) draws: per draw, log loss
    ``~ Normal(law, run_sd^2 [+ noise variance])``; its central ``level`` interval is read off
    the weighted mixture. ``weights`` (S,) or (J, S), default uniform; ``anchor`` overrides
    the size anchor of the run-offset sd (see the module docstring).
    """
    x_n, x_d = draws.centre(target_params, target_tokens)
    mean = draws.log_law(x_n, x_d)[:, 0]
    var = draws.run_sd(float(x_n), anchor) ** 2 + (draws.noise_variance() if observation_noise else 0.0)
    if weights is None:
        weights = np.full(draws.n_draws, 1.0 / draws.n_draws)
    tail = (1.0 - level) / 2.0
    lo, mid, hi = _mixture_quantiles(np.asarray(weights, float), mean, np.sqrt(var), (tail, 0.5, 1.0 - tail))
    return (np.exp(hi) - np.exp(lo)) / np.exp(mid)


def anchor_after(draws: PlanDraws, num_params: float) -> float:
    """Size anchor (centred log N) once a run of ``num_params`` is trained: the largest size."""
    if draws.sigma_size is None:
        return draws.size_anchor
    return max(draws.size_anchor, float(draws.centre(num_params, 1.0)[0]))


def simulate_and_weigh(draws: PlanDraws, candidate: Candidate, n_outcomes: int, rng: np.random.Generator):
    """Simulated outcomes of ``candidate`` and the importance weights they give.

    Returns ``(weights (J, S), anchor)``: one row of weights per simulated outcome, and the
    size anchor after the candidate is trained.
    """
    anchor = anchor_after(draws, candidate.num_params)
    source = rng.integers(0, draws.n_draws, size=n_outcomes)  # the draw each outcome is simulated from
    log_lik = np.zeros((n_outcomes, draws.n_draws))
    for num_params, tokens in candidate.runs:
        x_n, x_d = draws.centre(np.full(tokens.shape, num_params), tokens)
        law = draws.log_law(x_n, x_d)  # (S, m)
        sd = draws.run_sd(float(x_n[0]), anchor)
        offset = sd[source] * rng.standard_normal(n_outcomes)
        shape = (n_outcomes, len(tokens))
        noise = rng.standard_t(draws.nu, shape) if math.isfinite(draws.nu) else rng.standard_normal(shape)
        observed = law[source] + offset[:, None] + draws.sigma_obs[source, None] * noise  # (J, m)
        log_lik += run_log_likelihood(observed[:, None, :] - law[None, :, :], sd, draws.sigma_obs, draws.nu)
    return importance_weights(log_lik), anchor


def observed_weights(draws: PlanDraws, runs: Iterable[tuple[float, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Importance weights (S,) of the draws given runs actually observed: ``(num_params,
    checkpoint tokens, loss)`` per run (the same update :func:`next_run` simulates)."""
    runs = list(runs)
    anchor = anchor_after(draws, max(n for n, _, _ in runs))
    log_lik = np.zeros(draws.n_draws)
    for num_params, tokens, loss in runs:
        x_n, x_d = draws.centre(np.full(np.shape(tokens), num_params), tokens)
        resid = np.log(np.asarray(loss, float))[None, :] - draws.log_law(x_n, x_d)
        log_lik += run_log_likelihood(resid, draws.run_sd(float(x_n[0]), anchor), draws.sigma_obs, draws.nu)
    return importance_weights(log_lik)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class NextRunResult:
    """Ranked candidates of :func:`next_run`.

    Attributes
    ----------
    table : DataFrame
        One row per candidate, best first (largest expected width reduction per FLOP):
        ``rank, label, num_params, tokens, seeds, flops, cumulative_flops, expected_width,
        width_q10, width_q90, width_reduction, reduction_per_flop, ess_mean, ess_min,
        ess_share_low, ess_low``. Widths are relative to the predicted median loss at the target.
    width_now : float
        Width of the target's interval under the current posterior.
    existing_flops : float
        Pilot compute of the family's training runs so far (``cost`` of each).
    target : (float, float)
        Target ``(num_params, tokens)``.
    level : float
        Central interval level (0.9).
    outcomes : DataFrame
        Per candidate and simulated outcome: ``label, outcome, width, ess``.
    """

    table: pd.DataFrame
    width_now: float
    existing_flops: float
    target: tuple[float, float]
    level: float
    outcomes: pd.DataFrame


def next_run(
    fit,
    family: str | None = None,
    candidates: Sequence[Candidate] | pd.DataFrame | None = None,
    *,
    target: tuple[float, float],
    cost: CostFn = six_nd,
    budget_flops: float | None = None,
    n_outcomes: int = 64,
    observation_noise: bool = False,
    level: float = INTERVAL,
    min_ess: float = MIN_ESS,
    min_tokens: float | None = None,
    seed: int = 0,
) -> NextRunResult:
    """Rank candidate pilot runs by the expected shrinkage of the target's interval per FLOP.

    Parameters
    ----------
    fit : Fit or PlanDraws
        A fit holding ``family``, or draws already prepared (:func:`draws_from_fit`,
        :func:`draws_from_cell`; ``family`` is then ignored).
    family : str
        Family to plan for (with a Fit).
    candidates : list of Candidate, DataFrame or None
        Candidate runs; a DataFrame goes through :func:`candidates_from_table`; None: the grid
        of :func:`default_candidates`.
    target : (float, float)
        ``(num_params, tokens)`` of the run the pilots are for.
    cost : callable
        ``cost(num_params, tokens) -> FLOPs`` (vectorised); default ``6 N D``.
    budget_flops : float, optional
        Drop candidates costing more than this.
    n_outcomes : int
        Simulated outcomes per candidate (the preposterior average).
    observation_noise : bool
        Plan for the interval of a measured checkpoint (adds noise) instead of the run's loss.
    level : float
        Central interval level (default 0.9).
    min_ess : float
        Effective sample size below which an outcome counts as collapsed; candidates with
        more than :data:`MAX_LOW_ESS_SHARE` of their outcomes collapsed are flagged ``ess_low``.
    min_tokens : float, optional
        Checkpoints before this are not simulated (default: the fit's token cut; 0 for PlanDraws).
    seed : int
        Seed of the simulated outcomes (every candidate sees the same random numbers).

    Returns
    -------
    NextRunResult
    """
    if isinstance(fit, PlanDraws):
        draws = fit
        min_tokens = 0.0 if min_tokens is None else min_tokens
    else:
        if family is None:
            raise FitError("next_run needs the family to plan for")
        draws = draws_from_fit(fit, family)
        min_tokens = float(fit.filters.get("min_tokens", 0.0)) if min_tokens is None else min_tokens
    try:
        target_params, target_tokens = (float(v) for v in target)
    except (TypeError, ValueError):
        raise DataError(f"target must be (num_params, tokens), got {target!r}") from None
    if not all(np.isfinite(v) and v > 0 for v in (target_params, target_tokens)):
        raise DataError(f"target num_params and tokens must be finite and > 0, got {target!r}")
    if not 0 < level < 1:
        raise DataError(f"level must be in (0, 1), got {level!r}")
    if int(n_outcomes) < 1:
        raise DataError(f"n_outcomes must be >= 1, got {n_outcomes!r}")
    if candidates is None:
        candidates = default_candidates(draws, target_params, target_tokens, min_tokens=min_tokens)
    elif isinstance(candidates, pd.DataFrame):
        candidates = candidates_from_table(candidates, min_tokens=min_tokens)
    candidates = list(candidates)
    if not candidates:
        raise DataError("no candidate runs to rank")
    flops = np.array([c.flops(cost) for c in candidates])
    if budget_flops is not None:
        if not (np.isfinite(budget_flops) and budget_flops > 0):
            raise DataError(f"budget_flops must be finite and > 0, got {budget_flops!r}")
        keep = flops <= budget_flops
        if not keep.any():
            raise DataError(f"no candidate fits budget_flops={budget_flops:.3g} (cheapest costs {flops.min():.3g} FLOPs)")
        candidates, flops = [c for c, k in zip(candidates, keep) if k], flops[keep]
    existing = _existing_flops(draws, cost)
    width_now = float(target_width(draws, target_params, target_tokens, observation_noise=observation_noise, level=level))
    rows, outcome_rows = [], []
    for candidate, c_flops in zip(candidates, flops):
        rng = np.random.default_rng(seed)  # common random numbers: candidates differ by design, not by luck
        weights, anchor = simulate_and_weigh(draws, candidate, int(n_outcomes), rng)
        widths = target_width(draws, target_params, target_tokens, weights, anchor=anchor, observation_noise=observation_noise, level=level)
        ess = effective_sample_size(weights)
        expected = float(widths.mean())
        rows.append(
            {
                "label": candidate.label,
                "num_params": candidate.num_params,
                "tokens": candidate.tokens,
                "seeds": len(candidate.runs),
                "flops": float(c_flops),
                "cumulative_flops": existing + float(c_flops),
                "expected_width": expected,
                "width_q10": float(np.quantile(widths, 0.1)),
                "width_q90": float(np.quantile(widths, 0.9)),
                "width_reduction": width_now - expected,
                "reduction_per_flop": (width_now - expected) / float(c_flops),
                "ess_mean": float(ess.mean()),
                "ess_min": float(ess.min()),
                "ess_share_low": float(np.mean(ess < min_ess)),
                "ess_low": bool(np.mean(ess < min_ess) > MAX_LOW_ESS_SHARE),
            }
        )
        outcome_rows.append(pd.DataFrame({"label": candidate.label, "outcome": np.arange(len(widths)), "width": widths, "ess": ess}))
    table = pd.DataFrame(rows).sort_values("reduction_per_flop", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return NextRunResult(
        table=table,
        width_now=width_now,
        existing_flops=existing,
        target=(target_params, target_tokens),
        level=float(level),
        outcomes=pd.concat(outcome_rows, ignore_index=True),
    )
