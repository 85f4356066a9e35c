"""Many independent small NUTS fits as one vectorised JAX program.

The back-test (:mod:`bayes_scaling.backtest`) and per-family population fits run hundreds
of *independent* single-family fits of the cell model of :mod:`bayes_scaling.cellfit`.
:func:`bayes_scaling.cellfit.fit_cell` already compiles once per shape bucket, but then runs
one ``MCMC.run`` per cell and chain: on a CPU each run is a long chain of tiny XLA kernels
(a few hundred flops per leapfrog step), so dispatch and loop overhead dominate, and a GPU
would sit idle.

Design
------
Every (cell, chain) pair becomes one *lane*. Each lane runs NumPyro's own NUTS
(:func:`numpyro.infer.hmc.hmc`, ``algo="NUTS"``) with its own data, prior, PRNG key,
step-size and mass-matrix adaptation; ``jax.vmap`` maps the whole warmup + sampling loop
(one ``lax.scan``) over lanes and ``jax.jit`` compiles it once per (prior kind, shape
bucket, number of lanes, sampler settings). Cells are padded to the same buckets as
:func:`~bayes_scaling.cellfit.fit_cell` (points and runs rounded up to powers of two) and
the likelihood is masked, so the lanes are exactly the fits ``fit_cell`` would run.

Why this and not the alternatives:

* one joint NUTS over the product of all cells' posteriors would share one step size, one
  mass matrix and one trajectory across cells: valid draws, but the hardest cell sets the
  step size and tree depth of all and the diagnostics of one cell are no longer its own;
* ``MCMC(chain_method="vectorized")`` vectorises chains of *one* model with *one* set of
  data; cells differ in data and prior, which must be batched too;
* the lanes are independent Markov chains, so results agree with looped fits within Monte
  Carlo error (same model, same sampler, same adaptation schedule), not bit for bit (the
  initial point differs: prior medians plus a small seeded jitter instead of
  ``init_to_median``'s prior draws).

Cost model: under ``vmap`` NUTS' tree building (a ``while_loop``) runs in lockstep, so each
iteration costs the *largest* tree among the lanes of a batch (finished lanes wait, masked).
Batching pays when per-lane overhead dominates (tiny models on CPU; any GPU), and costs
when one lane needs much deeper trees than the rest; :func:`fit_cells_batched` reports the
per-lane leapfrog steps so that trade-off can be measured (see ``benchmarks/scale.py``).

A lane's result depends only on its cell's data, prior, seed and the batch's shapes, not
on which other cells share the batch (up to floating-point reassociation of vectorised
kernels), so callers that chunk cells deterministically get the same numbers on any
executor.

Units: as in :mod:`bayes_scaling.cellfit` (centred log covariates, log loss in nats).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer.hmc import hmc
from numpyro.infer.util import initialize_model

from .cellfit import (
    N_PARAMS,
    POINTS_BUCKET,
    RUNS_BUCKET,
    TEMPERATURES,
    CellPosterior,
    CellPrior,
    _bucket,
    _model,
    data_centre,
    dense_sites,
    family_r_hat,
    model_args,
    needs_retry,
    needs_tempering,
    thinned,
    tree_depth,
)
from .laws import to_level_coordinates
from .programs import traced


@dataclass(frozen=True)
class CellProblem:
    """One independent single-family fit: data, prior and seed.

    Attributes
    ----------
    x_n, x_d : ndarray (n,)
        Centred covariates ``log(N / 1e9)`` and ``log(D / 1e11)``.
    run_idx : ndarray of int (n,)
        Run of each checkpoint, 0 .. n_runs - 1.
    log_loss : ndarray (n,)
        Natural log of the observed loss (nats).
    prior : CellPrior
    seed : int
        PRNG seed of this fit's chains.
    weight : ndarray (n,), optional
        Likelihood weight of each checkpoint (:func:`bayes_scaling.cellfit.effective_weights`); default 1.
    """

    x_n: np.ndarray
    x_d: np.ndarray
    run_idx: np.ndarray
    log_loss: np.ndarray
    prior: CellPrior
    seed: int = 0
    weight: np.ndarray | None = None

    def __post_init__(self):
        if self.weight is None:
            object.__setattr__(self, "weight", np.ones(len(np.atleast_1d(self.log_loss))))
        arrays = {k: np.asarray(getattr(self, k), int if k == "run_idx" else float) for k in ("x_n", "x_d", "run_idx", "log_loss", "weight")}
        n = len(arrays["log_loss"])
        if n == 0:
            raise ValueError("a cell problem needs at least one checkpoint")
        if any(len(a) != n for a in arrays.values()):
            raise ValueError("x_n, x_d, run_idx and log_loss differ in length")
        if arrays["run_idx"].min() < 0:
            raise ValueError("run_idx must be >= 0")
        for k, a in arrays.items():
            object.__setattr__(self, k, a)

    @property
    def n_points(self) -> int:
        return len(self.log_loss)

    @property
    def n_runs(self) -> int:
        return int(self.run_idx.max()) + 1

    def bucket(self) -> tuple[tuple[str, bool, bool, bool], int, int]:
        """(the prior's :attr:`~bayes_scaling.cellfit.CellPrior.kind`, padded points, padded
        runs): problems with equal buckets share a compilation."""
        return (self.prior.kind, _bucket(self.n_points, *POINTS_BUCKET), _bucket(self.n_runs, *RUNS_BUCKET))


@dataclass(frozen=True)
class BatchedPosterior(CellPosterior):
    """A :class:`~bayes_scaling.cellfit.CellPosterior` plus the sampler's work per draw.

    Attributes
    ----------
    num_steps : ndarray (chains, draws)
        Leapfrog steps of each kept draw (tree depth = log2(num_steps + 1)).
    warmup_steps : ndarray (chains, warmup)
        Leapfrog steps of each warmup iteration.
    """

    num_steps: np.ndarray = None
    warmup_steps: np.ndarray = None


def _args(problem: CellProblem, n_pad: int, r_pad: int) -> tuple[np.ndarray, ...]:
    """Padded model arguments of :func:`bayes_scaling.cellfit._model` (NumPy, float/int/bool)."""
    return model_args(problem.x_n, problem.x_d, problem.run_idx, problem.log_loss, problem.weight, problem.prior, n_pad, r_pad)


def _log_median(kind, a, b):
    """Log of the prior median of a scale (unconstrained init of sigma_run / sigma_obs)."""
    if kind == "half_normal":
        return jnp.log(a * 0.6744897501960817)
    return a


@lru_cache(maxsize=None)
def _program(
    kind: tuple[str, bool, bool, bool],
    n_pad: int,
    r_pad: int,
    n_lanes: int,
    warmup: int,
    draws: int,
    target_accept: float,
    max_tree_depth: int,
    continued: bool = False,
    temperatures: tuple = (1.0,),
):
    """Jitted ``(keys[L], args[L, ...]) -> (theta, sigma_run, sigma_obs, sigma_size, run_offset,
    diverging, num_steps, warmup_steps), states`` over L lanes: every iteration after warmup, and each
    lane's final sampler state; ``kind`` = :attr:`CellPrior.kind` (scale prior kind, marginal
    likelihood, size term, Student-t prior); sigma_size is 0 without a size term. With
    ``continued`` the program takes the states in place of the keys and runs ``draws`` more
    iterations from them, no warmup (warmup_steps then has length 0): the iterations one
    longer run would have made. With several ``temperatures`` each lane is a replica exchange
    (parallel tempering) of ``len(temperatures)`` NUTS chains, the likelihood weights of each
    multiplied by its temperature."""
    scale_kind, marginal, size_term, heavy_tailed = kind
    model = _model(*kind)
    shapes = dict(size_scale=(1.0, 1.0) if size_term else None, df=4.0 if heavy_tailed else math.inf)
    prior = CellPrior(np.zeros(N_PARAMS), np.eye(N_PARAMS), scale_kind, (1.0, 1.0), (1.0, 1.0), **shapes)  # shapes only
    example = _args(CellProblem(np.zeros(1), np.zeros(1), np.zeros(1, int), np.zeros(1), prior), n_pad, r_pad)
    info = initialize_model(jax.random.PRNGKey(0), model, model_args=tuple(jnp.asarray(a) for a in example), dynamic_args=True)
    potential_fn_gen, postprocess_gen = info.potential_fn, info.postprocess_fn

    n_temps = len(temperatures)
    tempered = n_temps > 1

    def exchanged(state, args, iteration, swap_key):
        """Swap states with the neighbouring temperature (pairs (0, 1), (2, 3), ... on even
        iterations, (1, 2), (3, 4), ... on odd ones), accepted with the Metropolis ratio of the
        two tempered posteriors; ``args`` carry this lane's tempered weights, ``swap_key`` is the
        same for every temperature of a chain, so both lanes of a pair draw the same uniform."""
        i = jax.lax.axis_index("temperature")
        partner = jnp.where(i % 2 == iteration % 2, i + 1, i - 1)
        paired = (partner >= 0) & (partner < n_temps)
        partner = jnp.clip(partner, 0, n_temps - 1)
        z_partner = jax.tree.map(lambda a: jax.lax.all_gather(a, "temperature")[partner], state.z)
        cross, cross_grad = jax.value_and_grad(potential_fn_gen(*args))(z_partner)
        own = jax.lax.all_gather(state.potential_energy, "temperature")
        crosses = jax.lax.all_gather(cross, "temperature")
        log_ratio = own[i] + own[partner] - crosses[i] - crosses[partner]
        u = jax.random.uniform(jax.random.fold_in(swap_key, iteration), (n_temps,))
        accept = paired & (jnp.log(u[jnp.minimum(i, partner)]) < log_ratio)
        pick = lambda new, old: jnp.where(accept, new, old)  # noqa: E731
        state = state._replace(
            z=jax.tree.map(pick, z_partner, state.z),
            z_grad=jax.tree.map(pick, cross_grad, state.z_grad),
            potential_energy=pick(cross, state.potential_energy),
        )
        return state

    def kernels(z0, rng_key, args):
        """The lane's initial state at ``z0`` and its NUTS step (hmc's init sets the step up)."""
        init_kernel, sample_kernel = hmc(potential_fn_gen=potential_fn_gen, algo="NUTS")
        state = init_kernel(
            z0,
            warmup,
            dense_mass=[dense_sites(size_term)],
            target_accept_prob=target_accept,
            max_tree_depth=max_tree_depth,
            model_args=args[: len(example)],
            rng_key=rng_key,
        )

        def step(s, iteration):
            s = sample_kernel(s, model_args=args[: len(example)])
            if tempered:  # the replica's swap key follows the model arguments
                s = exchanged(s, args[: len(example)], iteration, args[len(example)])
            return s, (s.z, s.diverging, s.num_steps)

        return state, step

    def draws_from(state, step, args, warmup_steps):
        state, (zs, diverging, num_steps) = jax.lax.scan(step, state, jnp.arange(warmup, warmup + draws))
        constrained = jax.vmap(postprocess_gen(*args[: len(example)]))(zs)
        sigma_size = constrained["sigma_size"] if size_term else jnp.zeros_like(constrained["sigma_run"])
        # integrated out under the Normal likelihood: no draws of the offsets (zeros)
        run_offset = jnp.zeros(sigma_size.shape + (r_pad,)) if marginal else constrained["run_offset"]
        return (constrained["theta"], constrained["sigma_run"], constrained["sigma_obs"], sigma_size, run_offset, diverging, num_steps, warmup_steps), state

    def lane(key, args):
        key_init, key_run = jax.random.split(key)
        jitter = jax.random.uniform(key_init, (N_PARAMS + r_pad + 2 + int(size_term),), minval=-0.2, maxval=0.2)
        scale_jitter = jitter[N_PARAMS + r_pad :]  # sigma_run, sigma_obs[, sigma_size]
        loc, scale_tril = args[5], args[6]
        z0 = {  # near the prior mean: theta = loc + L jitter, in the model's level coordinates
            "theta_level": to_level_coordinates(loc + scale_tril @ jitter[:N_PARAMS], *data_centre(args[0], args[1], args[3])),
            "sigma_run": _log_median(scale_kind, args[7], args[8]) + scale_jitter[0],
            "sigma_obs": _log_median(scale_kind, args[9], args[10]) + scale_jitter[1],
        }
        if size_term:
            z0["sigma_size"] = _log_median(scale_kind, args[12], args[13]) + scale_jitter[2]
        if not marginal:
            z0["run_z"] = jitter[N_PARAMS : N_PARAMS + r_pad]
        state, step = kernels(z0, key_run, args)
        state, (_, _, warmup_steps) = jax.lax.scan(step, state, jnp.arange(warmup))
        return draws_from(state, step, args, warmup_steps)

    def replicas(key, args):
        """One chain as ``n_temps`` lanes, likelihood weights times each temperature, exchanging
        states after every iteration (warmup too); the first lane's (temperature 1) is kept."""
        key_lanes, swap_key = jax.random.split(key)
        weight = len(example) - 2
        temps = jnp.asarray(temperatures, args[weight].dtype)
        lane_args = tuple(jnp.broadcast_to(a, (n_temps, *a.shape)) for a in args)
        lane_args = (*lane_args[:weight], temps[:, None] * args[weight][None, :], *lane_args[weight + 1 :], jnp.broadcast_to(swap_key, (n_temps, *swap_key.shape)))
        outputs, _ = jax.vmap(lane, axis_name="temperature")(jax.random.split(key_lanes, n_temps), lane_args)
        return jax.tree.map(lambda a: a[0], outputs), ()  # never carried on: no states

    if tempered:
        if continued:
            raise ValueError("a tempered program starts afresh")
        # kept on disk (a user's retry, in a new process each time, skips tracing it)
        name = f"replicas-{'-'.join(map(str, kind))}-{n_pad}-{r_pad}-{n_lanes}-{warmup}-{draws}-{target_accept}-{max_tree_depth}-{'-'.join(map(str, temperatures))}"
        return jax.jit(traced(jax.vmap(replicas), name))

    def continued_lane(state, args):
        _, step = kernels(state.z, state.rng_key, args)
        return draws_from(state, step, args, jnp.zeros(0, int))

    return jax.jit(jax.vmap(continued_lane if continued else lane))


def _cells_bucket(n: int) -> int:
    """Cells per program call, rounded up (power of two below 8, then multiples of 8) so
    that chunks of similar size reuse one compilation; filler lanes are discarded."""
    if n <= 8:
        return int(2 ** int(np.ceil(np.log2(max(n, 1)))))
    return int(8 * np.ceil(n / 8))


def fit_cells_batched(
    problems: Sequence[CellProblem],
    *,
    chains: int = 2,
    warmup: int = 300,
    draws: int = 300,
    target_accept: float = 0.9,
    max_tree_depth: int = 8,
    max_batch: int | None = None,
    retry_thinning: int = 1,
    tempering: bool = False,
) -> list[BatchedPosterior]:
    """Fit many independent single-family cell models in vectorised NUTS programs.

    Same model and sampler settings as :func:`bayes_scaling.cellfit.fit_cell`; each
    (problem, chain) is one lane of a ``vmap``-ed NUTS program (see module docstring).

    Parameters
    ----------
    problems : sequence of CellProblem
        The fits; each carries its data, prior and seed.
    chains, warmup, draws : int
        NUTS chains per problem, warmup iterations and kept draws per chain.
    target_accept, max_tree_depth
        NUTS settings.
    max_batch : int, optional
        At most this many problems per compiled program call (default: all problems of a
        shape bucket at once). Chunks are taken in input order, so the same list gives the
        same chunks on any machine.
    retry_thinning : int
        Above 1, problems whose fit has r_hat above :data:`~bayes_scaling.convergence.MAX_R_HAT`
        are fitted again, once, as :func:`bayes_scaling.cellfit.fit_cell` does: carried on to
        this many times the iterations, every ``retry_thinning``-th draw kept, or, with
        ``tempering`` and r_hat above :data:`~bayes_scaling.convergence.MIXED_RHAT`, a replica
        exchange over :data:`~bayes_scaling.cellfit.TEMPERATURES`; 1: never.
    tempering : bool
        Opt-in, as for ``fit_cell``; False (default): every retry is carried on.

    Returns
    -------
    list of BatchedPosterior
        In the order of ``problems``.
    """
    problems = list(problems)
    for name, value in (("chains", chains), ("draws", draws), ("retry_thinning", retry_thinning)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if int(warmup) != warmup or warmup < 0:
        raise ValueError(f"warmup must be a non-negative integer, got {warmup!r}")
    if max_batch is not None and max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
    nuts = (int(chains), int(warmup), int(draws), float(target_accept), int(max_tree_depth), (1.0,))
    first = _fit_all(problems, nuts, max_batch)
    out = [post for post, _ in first]
    retry = [i for i, post in enumerate(out) if needs_retry(post, retry_thinning)]
    tempered = [i for i in retry if tempering and needs_tempering(out[i])]
    if tempered:  # chains in different places: a replica exchange from the start
        settings = dict(zip(("chains", "warmup", "draws", "target_accept", "max_tree_depth"), nuts))
        for i, post in zip(tempered, fit_tempered([problems[i] for i in tempered], TEMPERATURES, max_batch=max_batch, **settings)):
            out[i] = dataclasses.replace(post, retried=True)
    again = [i for i in retry if i not in tempered]
    if again:
        # the unmixed fits' chains carried on from where they stopped, as one longer run, then thinned
        longer = (*nuts[:2], nuts[2] * (int(retry_thinning) - 1), *nuts[3:])
        more = _fit_all([problems[i] for i in again], longer, max_batch, [first[i][1] for i in again])
        for i, (post, _) in zip(again, more):
            out[i] = _carried_on(problems[i], first[i][0], post, int(retry_thinning))
    return out


def fit_tempered(problems: Sequence[CellProblem], tempering: tuple, *, max_batch: int | None = None, **nuts) -> list[BatchedPosterior]:
    """Replica-exchange fits (the opt-in retry of fits whose chains sit apart): each of the
    ``chains`` is a ladder of NUTS chains at the likelihood powers ``tempering``, exchanging
    states after every iteration; the draws at power 1 are kept (``tempered`` True).
    ``nuts``: chains, warmup, draws, target_accept, max_tree_depth."""
    settings = tuple(nuts[k] for k in ("chains", "warmup", "draws", "target_accept", "max_tree_depth"))
    return [dataclasses.replace(post, tempered=True) for post, _ in _fit_all(list(problems), (*settings, _ladder(tempering)), max_batch)]


def _ladder(tempering) -> tuple[float, ...]:
    ladder = tuple(float(t) for t in tempering)
    if not ladder or ladder[0] != 1.0 or not all(0 < t <= 1 for t in ladder):
        raise ValueError(f"tempering must start at 1.0 and lie in (0, 1], got {tempering!r}")
    return ladder


def _fit_all(problems: list, nuts: tuple, max_batch: int | None, states: list | None = None) -> list[tuple]:
    """Every problem fitted once, bucket by bucket, in chunks of at most ``max_batch``:
    ``[(BatchedPosterior of every iteration, final sampler state per chain), ...]``; with
    ``states`` (one per problem), the fits carry on from them."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(problems):
        groups.setdefault(p.bucket(), []).append(i)
    out: list[tuple | None] = [None] * len(problems)
    for (kind, n_pad, r_pad), idx in groups.items():
        size = max_batch or len(idx)
        for start in range(0, len(idx), size):
            chunk = idx[start : start + size]
            chunk_states = None if states is None else [states[i] for i in chunk]
            for i, result in zip(chunk, _fit_chunk([problems[i] for i in chunk], kind, n_pad, r_pad, *nuts, states=chunk_states)):
                out[i] = result
    return out  # type: ignore[return-value]


def _fit_chunk(chunk, kind, n_pad, r_pad, chains, warmup, draws, target_accept, max_tree_depth, temperatures=(1.0,), states=None):
    n_cells = len(chunk)
    padded_cells = _cells_bucket(n_cells)
    n_lanes = padded_cells * chains
    cell_args = [_args(p, n_pad, r_pad) for p in chunk]
    cell_args += [cell_args[-1]] * (padded_cells - n_cells)  # filler lanes, discarded
    args = tuple(jnp.asarray(np.repeat(np.stack([a[j] for a in cell_args]), chains, axis=0)) for j in range(len(cell_args[0])))
    program = _program(kind, n_pad, r_pad, n_lanes, warmup, draws, target_accept, max_tree_depth, continued=states is not None, temperatures=temperatures)
    if states is None:
        seeds = [p.seed for p in chunk] + [chunk[-1].seed] * (padded_cells - n_cells)
        start = jnp.concatenate([jax.random.split(jax.random.PRNGKey(int(s) % (2**31)), chains) for s in seeds])
    else:  # each cell's state holds its chains on the leading axis
        states = list(states) + [states[-1]] * (padded_cells - n_cells)
        start = jax.tree.map(lambda *per_cell: np.concatenate(per_cell), *states)
    outputs, final = program(start, args)
    final = jax.device_get(final)  # on the host once: each cell's slice below is then a view
    theta, sigma_run, sigma_obs, sigma_size, run_offset, diverging, num_steps, warmup_steps = (
        np.asarray(a).reshape(padded_cells, chains, *a.shape[1:]) for a in outputs
    )
    return [
        (
            _posterior(
                chunk[c], chains, theta[c], sigma_run[c], sigma_obs[c], sigma_size[c], run_offset[c], diverging[c], num_steps[c], warmup_steps[c]
            ),
            jax.tree.map(lambda a: a[c * chains : (c + 1) * chains], final),
        )
        for c in range(n_cells)
    ]


def _posterior(problem, chains, theta, sigma_run, sigma_obs, sigma_size, run_offset, diverging, num_steps, warmup_steps, retried=False, tempered=False):
    """A :class:`BatchedPosterior` from one cell's arrays, each with axes (chains, draws, ...)."""
    size_term = problem.prior.size_term
    theta, sigma_run, sigma_obs = theta.reshape(-1, N_PARAMS), sigma_run.reshape(-1), sigma_obs.reshape(-1)
    sigma_size = sigma_size.reshape(-1) if size_term else None
    return BatchedPosterior(
        theta=theta,
        sigma_run=sigma_run,
        sigma_obs=sigma_obs,
        nu=float(problem.prior.nu),
        divergences=int(diverging.sum()),
        max_rhat=family_r_hat(chains, theta, sigma_run, sigma_obs, sigma_size),
        sigma_size=sigma_size,
        size_anchor=float(problem.x_n.max()),
        chains=chains,
        run_offset=run_offset.reshape(len(theta), -1)[:, : problem.n_runs],
        diverging=diverging.reshape(-1).astype(bool),
        num_steps=num_steps,
        warmup_steps=warmup_steps,
        tree_depth=None if retried else tree_depth(num_steps),  # carried on: num_steps sums iterations
        retried=retried,
        tempered=tempered,
    )


def _carried_on(problem, first: BatchedPosterior, more: BatchedPosterior, thinning: int) -> BatchedPosterior:
    """The first fit and its continuation as one run, every ``thinning``-th iteration kept
    (num_steps: the sum over the iterations a kept draw stands for)."""
    def by_chain(p):
        sigma_size = p.sigma_size if problem.prior.size_term else np.zeros_like(p.sigma_run)
        return tuple(p.by_chain(a) for a in (p.theta, p.sigma_run, p.sigma_obs, sigma_size, p.run_offset, p.diverging))

    theta, sigma_run, sigma_obs, sigma_size, run_offset, diverging = thinned(by_chain(first), by_chain(more), thinning)
    steps = np.concatenate([first.num_steps, more.num_steps], axis=1)
    num_steps = steps.reshape(first.chains, -1, thinning).sum(axis=2)
    return _posterior(problem, first.chains, theta, sigma_run, sigma_obs, sigma_size, run_offset, diverging, num_steps, first.warmup_steps, retried=True)


def problems_from(items: Iterable[tuple]) -> list[CellProblem]:
    """``[(x_n, x_d, run_idx, log_loss, prior, seed), ...]`` -> list of :class:`CellProblem`."""
    return [CellProblem(*item) for item in items]
