"""Benchmark: N independent single-family NUTS fits, batched (one vmap-ed program) vs looped.

Fits the back-test's cell model (:mod:`bayes_scaling.cellfit`) to ``--n-fits`` synthetic
families (each: its 3 smallest sizes, checkpoints >= 1e10 tokens thinned to 8 per run, the
independent prior), once with a Python loop over :func:`bayes_scaling.cellfit.fit_cell`
(one compiled sampler reused) and once with :func:`bayes_scaling.batched.fit_cells_batched`.
Compilation is timed separately (first call); the steady-state wall time is the median
over ``--repeats`` runs, measured after ``jax.block_until_ready``. Also reports agreement
of the two (posterior means in units of posterior sd) and where the sampler's time goes
(leapfrog steps per draw, tree depth, lockstep overhead of the batch).

Runs unchanged on a GPU machine::

    python benchmarks/scale.py --platform gpu          # pip install 'bayes-scaling[cuda]'
    python benchmarks/scale.py [--n-fits 100] [--repeats 3] [--out benchmarks/results/scale.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def make_problems(n_fits: int, seed: int):
    import numpy as np

    from bayes_scaling.batched import CellProblem
    from bayes_scaling.cellfit import independent_prior
    from bayes_scaling.data import thin_log_spaced
    from bayes_scaling.datasets import synthetic
    from bayes_scaling.laws import centre

    runs, _ = synthetic(n_families=n_fits, seed=seed)
    prior = independent_prior()
    problems = []
    for i, (family, g) in enumerate(runs.groupby("family", sort=True)):
        sizes = np.sort(g["num_params"].unique())[:3]
        g = g[g["num_params"].isin(sizes) & (g["tokens"] >= 1e10)]
        parts = []
        for _, run in list(g.groupby("model", sort=True))[:4]:
            parts.append(run.iloc[np.sort(thin_log_spaced(run["tokens"].to_numpy(), 8))])
        g = __import__("pandas").concat(parts)
        models = {m: j for j, m in enumerate(dict.fromkeys(g["model"]))}
        x_n, x_d = centre(g["num_params"], g["tokens"])
        problems.append(
            CellProblem(np.asarray(x_n), np.asarray(x_d), g["model"].map(models).to_numpy(), np.log(g["loss"].to_numpy()), prior, seed=i)
        )
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", choices=("cpu", "gpu", "auto"), default="cpu")
    parser.add_argument("--n-fits", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each method (median reported)")
    parser.add_argument("--loop-repeats", type=int, default=None, help="repeats of the (slow) loop; default --repeats")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--max-tree-depth", type=int, default=7)
    parser.add_argument("--target-accept", type=float, default=0.9)
    parser.add_argument("--max-batch", type=int, default=None, help="problems per program call (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_benchmark.md")
    args = parser.parse_args(argv)

    import numpyro

    if args.platform != "auto":
        numpyro.set_platform(args.platform)
    import jax
    import numpy as np

    from bayes_scaling.batched import fit_cells_batched
    from bayes_scaling.cellfit import fit_cell

    settings = dict(chains=args.chains, warmup=args.warmup, draws=args.draws, target_accept=args.target_accept, max_tree_depth=args.max_tree_depth)
    problems = make_problems(args.n_fits, args.seed)
    buckets = sorted({p.bucket() for p in problems})
    print(f"{len(problems)} problems, buckets {buckets}, device {jax.devices()[0]}", file=sys.stderr)

    def looped():
        return [fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **settings) for p in problems]

    def batched():
        return fit_cells_batched(problems, max_batch=args.max_batch, **settings)

    timings = {}
    results = {}
    def looped_warm():  # compiles the loop's sampler with one fit; the timed repeats then fit all
        p = problems[0]
        return fit_cell(p.x_n, p.x_d, p.run_idx, p.log_loss, p.prior, seed=p.seed, **settings)

    loop_reps = args.loop_repeats or args.repeats
    for name, fn, reps in (("batched", batched, args.repeats), ("looped", looped, loop_reps)):
        t0 = time.perf_counter()
        results[name] = fn() if name == "batched" else looped_warm()  # includes compilation
        first = time.perf_counter() - t0
        times = []
        for r in range(reps):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
            if name == "looped":
                results[name] = out
            print(f"{name} repeat {r + 1}/{reps}: {times[-1]:.1f} s ({1000 * times[-1] / len(problems):.0f} ms/fit)", file=sys.stderr)
        timings[name] = {"first_call_s": first, "times_s": times, "median_s": statistics.median(times)}
        per_fit = timings[name]["median_s"] / len(problems)
        # batched first call = compile + all fits; looped first call = compile + one fit
        timings[name]["compile_s_est"] = max(first - (timings[name]["median_s"] if name == "batched" else per_fit), 0.0)
        print(f"{name}: first call {first:.1f} s, median {timings[name]['median_s']:.1f} s", file=sys.stderr)

    ratio = timings["looped"]["median_s"] / timings["batched"]["median_s"]
    # time to first results incl. compilation: batched first call vs looped compile + all fits
    ratio_first = (timings["looped"]["compile_s_est"] + timings["looped"]["median_s"]) / timings["batched"]["first_call_s"]
    # agreement: difference of posterior means in units of the pooled posterior sd
    z = []
    for b, l in zip(results["batched"], results["looped"]):
        sd = np.sqrt((b.theta.var(0) + l.theta.var(0)) / 2)
        z.append(np.abs(b.theta.mean(0) - l.theta.mean(0)) / sd)
    z = np.array(z)
    steps = np.stack([b.num_steps for b in results["batched"]])  # fits, chains, draws
    wsteps = np.stack([b.warmup_steps for b in results["batched"]])  # fits, chains, warmup
    # lockstep cost of each phase: per iteration, the batch's largest tree
    lock_w = wsteps.reshape(-1, wsteps.shape[-1]).max(axis=0).sum()
    lock_s = steps.reshape(-1, steps.shape[-1]).max(axis=0).sum()
    depth = np.log2(steps + 1)
    lockstep = steps.reshape(-1, steps.shape[-1]).max(axis=0).mean() / steps.mean()
    div_b = sum(b.divergences for b in results["batched"])
    div_l = sum(l.divergences for l in results["looped"])
    rhat_b = np.nanmax([b.max_rhat for b in results["batched"]])
    rhat_l = np.nanmax([l.max_rhat for l in results["looped"]])
    n = len(problems)
    summary = {
        "machine": f"{platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} logical CPUs | load avg {os.getloadavg()[0]:.1f} at end",
        "device": str(jax.devices()[0]),
        "versions": {"jax": jax.__version__, "numpyro": numpyro.__version__, "python": platform.python_version()},
        "settings": {**settings, "n_fits": n, "repeats": args.repeats, "loop_repeats": args.loop_repeats or args.repeats, "max_batch": args.max_batch, "buckets": [list(b) for b in buckets]},
        "timings": timings,
        "ratio_median": ratio,
        "ratio_first_call": ratio_first,
        "ms_per_fit": {k: 1000 * v["median_s"] / n for k, v in timings.items()},
        "agreement": {"median_abs_z": float(np.median(z)), "p95_abs_z": float(np.quantile(z, 0.95)), "max_abs_z": float(z.max())},
        "sampler": {
            "mean_steps_per_draw": float(steps.mean()),
            "mean_steps_per_warmup_iteration": float(wsteps.mean()),
            "warmup_share_of_leapfrogs": float(wsteps.sum() / (wsteps.sum() + steps.sum())),
            "warmup_share_of_lockstep_leapfrogs": float(lock_w / (lock_w + lock_s)),
            "mean_tree_depth": float(depth.mean()),
            "share_draws_at_max_depth": float(np.mean(steps >= 2**args.max_tree_depth - 1)),
            "lockstep_factor": float(lockstep),
            "divergences_batched": int(div_b),
            "divergences_looped": int(div_l),
            "max_rhat_batched": float(rhat_b),
            "max_rhat_looped": float(rhat_l),
        },
    }
    for name in ("batched", "looped"):
        print(f"{name:8s} median {timings[name]['median_s']:8.1f} s  {summary['ms_per_fit'][name]:8.0f} ms/fit  (first call {timings[name]['first_call_s']:.1f} s)")
    print(f"ratio looped/batched (median): {ratio:.1f}x;  agreement |z| median {summary['agreement']['median_abs_z']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    args.out.write_text(render(summary))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def render(s: dict) -> str:
    t, st, ag = s["timings"], s["sampler"], s["agreement"]
    lines = [
        "# Batched vs looped: independent cell fits",
        "",
        f"- machine: {s['machine']}",
        f"- device: {s['device']}; versions: {s['versions']}",
        f"- settings: {s['settings']}",
        "",
        "| method | first call (s; batched: compile + all fits, looped: compile + 1 fit) | compile (s, est.) | median of all fits (s) | ms per fit | repeats (s) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("batched", "looped"):
        lines.append(
            f"| {name} | {t[name]['first_call_s']:.1f} | {t[name]['compile_s_est']:.1f} | {t[name]['median_s']:.1f} | {s['ms_per_fit'][name]:.0f} | "
            + ", ".join(f"{x:.1f}" for x in t[name]["times_s"])
            + " |"
        )
    lines += [
        "",
        f"**looped / batched = {s['ratio_median']:.1f}x** (medians of steady-state runs; including each method's compilation: {s['ratio_first_call']:.1f}x)",
        "",
        f"Agreement (|mean_batched - mean_looped| / posterior sd over 5 parameters x {s['settings']['n_fits']} fits): "
        f"median {ag['median_abs_z']:.2f}, 95th percentile {ag['p95_abs_z']:.2f}, max {ag['max_abs_z']:.2f}.",
        "",
        f"Sampler: warmup {st['mean_steps_per_warmup_iteration']:.1f} and sampling {st['mean_steps_per_draw']:.1f} leapfrog steps per iteration; "
        f"warmup is {100 * st['warmup_share_of_leapfrogs']:.0f}% of all leapfrog steps ({100 * st['warmup_share_of_lockstep_leapfrogs']:.0f}% of the batch's lockstep steps). "
        f"Mean tree depth of kept draws {st['mean_tree_depth']:.2f} ("
        f"{100 * st['share_draws_at_max_depth']:.1f}% at max depth); lockstep factor {st['lockstep_factor']:.2f} "
        "(mean over iterations of the batch's largest tree / mean tree: the vmap overhead of waiting for the slowest lane); "
        f"divergences batched {st['divergences_batched']}, looped {st['divergences_looped']}; "
        f"max r-hat batched {st['max_rhat_batched']:.3f}, looped {st['max_rhat_looped']:.3f}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
