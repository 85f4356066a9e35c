"""What a user feels: ``fit one-family.csv --population public`` then ``predict``, cold and warm.

Cold: fresh processes and an empty JAX compilation cache (first use after install). Warm:
the same commands again with the cache the cold run filled. Each command runs in its own
process, as a user types them; times are wall clock and include the package import. The
family is the real demo's training runs (Gemstones 48M and 52M, shipped with the package).
With ``--baseline REV`` the same commands also run from a git worktree of revision REV,
interleaved with this checkout's (same repeat, same cache state), so the two are compared
side by side on the same load. Writes ``benchmarks/results/user_speed.md``.

With ``--runs RUNS --family NAME`` the family is one of a runs table's instead (its
``--sizes`` smallest model sizes, the next size up predicted), for the cost of a family
whose first fit does not mix; the table is read where it lies and written only to a
temporary directory. Its results go to ``user_speed_<NAME>.md``.

With ``--tempering`` the checkout's ``fit --tempering`` (the opt-in replica-exchange retry)
is timed beside its default ``fit``, interleaved, in place of a baseline revision; results
go to ``user_speed_<NAME>_tempering.md``.

    python benchmarks/user_speed.py [--repeats 3] [--baseline REV | --tempering] [--runs RUNS --family NAME [--sizes 3]]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling.cellfit import SAMPLER_DEFAULTS  # noqa: E402
from bayes_scaling.data import load_runs  # noqa: E402
from bayes_scaling.inference import Fit  # noqa: E402
from bayes_scaling.demo import demo_runs  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402
from benchmarks._versions import checkout_revision, version_trees  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _median(rows, version: str, label: str) -> float:
    return statistics.median(r[5] for r in rows if r[0] == version and r[2] == label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REV", help="also time revision REV (a git worktree), interleaved")
    parser.add_argument("--runs", type=Path, help="a runs table (e.g. ../shared/data/runs.csv.gz) to take --family from")
    parser.add_argument("--family", help="family of --runs to fit (default: the shipped demo family)")
    parser.add_argument("--sizes", type=int, default=3, help="smallest model sizes of --family fitted (default 3)")
    parser.add_argument("--tempering", action="store_true", help="time fit --tempering beside the default fit (no --baseline)")
    args = parser.parse_args()
    if (args.runs is None) != (args.family is None):
        parser.error("--runs and --family go together")
    if args.tempering and args.baseline:
        parser.error("--tempering compares two settings of this checkout; it takes no --baseline")
    exe = [sys.executable, "-m", "bayes_scaling"]  # run from each version's tree: its package comes first on sys.path
    rows = []
    with tempfile.TemporaryDirectory() as work, version_trees(ROOT, args.baseline, Path(work)) as trees:
        work = Path(work)
        one = work / "one-family.csv"
        if args.runs is None:
            family, runs = "gemstones", demo_runs()
            described = "Gemstones 48M + 52M"
            runs[runs["num_params"] < runs["num_params"].max()].to_csv(one, index=False)
            target = (2e9, 3.5e11)
        else:
            family, runs = args.family, load_runs(args.runs)
            runs = runs[runs["family"] == family]
            if runs.empty:
                parser.error(f"no family {family!r} in {args.runs}")
            sizes = np.sort(runs["num_params"].unique())
            if len(sizes) <= args.sizes:
                parser.error(f"{family} has {len(sizes)} model sizes; --sizes must leave one to predict")
            runs[runs["num_params"] <= sizes[args.sizes - 1]].to_csv(one, index=False)
            target = (sizes[args.sizes], runs.loc[runs["num_params"] == sizes[args.sizes], "tokens"].max())
            described = f"{family}, its {args.sizes} smallest sizes ({', '.join(f'{n:.3g}' for n in sizes[: args.sizes])} parameters)"
        fit_cmd = [*exe, "fit", str(one), "--population", "public", "--out", str(work / "fit.nc"), "--no-progress"]
        predict_cmd = [*exe, "predict", str(work / "fit.nc"), "--family", family, "--params", f"{target[0]:g}", "--tokens", f"{target[1]:g}", "--new-run"]
        # (name, tree, extra fit arguments) of each version timed
        versions = [("this", ROOT, []), ("tempering", ROOT, ["--tempering"])] if args.tempering else [(v, tree, []) for v, tree in trees.items()]
        for i in range(args.repeats):
            for label in ("cold", "warm"):
                for version, tree, extra in versions:
                    env = {**os.environ, "BAYES_SCALING_CACHE_DIR": str(work / f"cache-{version}-{i}")}
                    env.pop("JAX_COMPILATION_CACHE_DIR", None)
                    f, p = timed(fit_cmd + extra, env, tree), timed(predict_cmd, env, tree)
                    # how the family's first fit was retried, if it was, as the fit recorded it
                    settings = Fit.load(work / "fit.nc").settings
                    retried = "tempered" if settings.get("tempered") else "carried on" if settings.get("retried") else "no"
                    rows.append((version, i, label, f, p, f + p, retried))
                    print(f"{version} repeat {i} {label}: fit {f:.1f} s, predict {p:.1f} s, retried {retried}", file=sys.stderr)
    load = os.getloadavg()[0]
    revision = checkout_revision(ROOT)
    lines = [
        "# Speed a user feels: one family under the public population",
        "",
        f"`bayes-scaling fit one-family.csv --population public` ({described}; default sampler of this "
        f"checkout: {SAMPLER_DEFAULTS['chains']} chains x ({SAMPLER_DEFAULTS['warmup']} + {SAMPLER_DEFAULTS['draws']})) then `bayes-scaling predict ... --new-run`, each in a fresh process; "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end. Bar (issue 17): cold <= 60 s, warm <= 15 s.",
        "",
        f"Versions: this = the checkout (HEAD {revision})"
        + (f", baseline = {args.baseline}, run interleaved with it" if args.baseline else "")
        + (", tempering = the same with `fit --tempering`, run interleaved with it" if args.tempering else "")
        + ".",
        "",
        "| version | repeat | cache | fit s | predict s | total s | retried |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[f"| {v} | {i} | {label} | {f:.1f} | {p:.1f} | {t:.1f} | {r} |" for v, i, label, f, p, t, r in rows],
        "",
        *[f"Median total, {v}: cold {_median(rows, v, 'cold'):.1f} s, warm {_median(rows, v, 'warm'):.1f} s." for v, _, _ in versions],
        "",
    ]
    if len(versions) == 2:
        other = next(v for v, _, _ in versions if v != "this")  # a baseline runs first
        lines += [
            f"Ratio this / {other} of the median totals: cold {_median(rows, 'this', 'cold') / _median(rows, other, 'cold'):.2f}, "
            f"warm {_median(rows, 'this', 'warm') / _median(rows, other, 'warm'):.2f}.",
            "",
        ]
    name = "user_speed" if args.family is None else f"user_speed_{args.family}"
    result = RESULTS / (name + ("_tempering" if args.tempering else "") + ".md")
    atomic_write_text(result, "\n".join(lines))
    print(f"wrote {result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
