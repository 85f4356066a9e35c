"""Rebuild what the package ships from the shared corpus, and report how the build went.

* ``bayes_scaling/populations/public.nc``: the public population (every family of the
  corpus with >= 3 model sizes at tokens >= 1e10, each fitted alone; only posterior
  summaries are stored, no curves), with ``bayes_scaling.population.BUILD_DEFAULTS``.
* ``bayes_scaling/demo_data/gemstones.csv``: the real demo's curves (Gemstones, MIT): the
  runs of the two smallest model sizes and of the largest, thinned.
* ``benchmarks/results/public_population.md``: members, convergence, time, settings.

Run from the repository root (2 worker processes by default)::

    python benchmarks/build_shipped_data.py            # about 15-25 min on 2 cores
    python benchmarks/build_shipped_data.py --reuse    # keep public.nc, redo the demo data and report

The corpus is read from ``$BAYES_SCALING_DATA`` or ``../shared/data``. Sources and licences
of everything shipped: ``bayes_scaling/NOTICE.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling import population  # noqa: E402
from bayes_scaling.backtest import md_table  # noqa: E402
from bayes_scaling.data import default_data_dir, thin_log_spaced  # noqa: E402
from bayes_scaling.demo import REAL_DEMO  # noqa: E402
from bayes_scaling.outputs import atomic_path, atomic_write_text  # noqa: E402

POPULATION_PATH = ROOT / "bayes_scaling" / "populations" / "public.nc"
DEMO_PATH = ROOT / "bayes_scaling" / "demo_data" / REAL_DEMO["file"]
REPORT_PATH = ROOT / "benchmarks" / "results" / "public_population.md"
NOTICE_PATH = ROOT / "bayes_scaling" / "NOTICE.md"
#: Checkpoints kept per demo run (log-spaced); the largest run also keeps its whole target window.
DEMO_CHECKPOINTS = 40
DEMO_COLUMNS = ["family", "model", "num_params", "tokens", "loss", "metric", "eval_set", "source"]


def demo_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The demo family's two smallest sizes and its largest run, thinned."""
    g = runs[(runs["family"] == REAL_DEMO["family"]) & runs["is_primary"]]
    sizes = np.sort(g["num_params"].unique())
    keep = g[g["num_params"].isin([*sizes[: REAL_DEMO["k"]], sizes[-1]])]
    parts = []
    for _, run in keep.groupby("model", sort=False):
        run = run.sort_values("tokens")
        rows = set(thin_log_spaced(run["tokens"].to_numpy(), DEMO_CHECKPOINTS))
        if run["num_params"].iloc[0] == sizes[-1]:
            rows |= set(np.flatnonzero(run["tokens"].to_numpy() >= 0.7 * run["tokens"].max()))
        parts.append(run.iloc[sorted(rows)])
    return pd.concat(parts)[DEMO_COLUMNS].reset_index(drop=True)


def notice(pop: population.Population, families: pd.DataFrame) -> str:
    """NOTICE.md: what is shipped, derived from which public sources, under which licences."""
    info = families.set_index("family")
    lines = [
        "# Data shipped with bayes_scaling: sources and licences",
        "",
        "Two files are derived from a corpus of public training-run loss curves (collected and",
        "normalised by the bayes_scaling developers; nothing was retrained):",
        "",
        "* `populations/public.nc`: a statistical summary only (per family: posterior mean and",
        "  covariance of five scaling-law parameters, log-moments of three noise scales, the error",
        "  of one extrapolation to its largest size, counts and convergence figures). No loss curves",
        "  or data points are stored.",
        f"* `demo_data/{DEMO_PATH.name}`: thinned loss curves of three runs of the",
        f"  `{REAL_DEMO['family']}` family ({info.loc[REAL_DEMO['family'], 'source']}; repository",
        f"  `{info.loc[REAL_DEMO['family'], 'source_repo']}`, licence: {info.loc[REAL_DEMO['family'], 'license']}).",
        "",
        "Families summarised in `populations/public.nc`, with their sources and licences as",
        "recorded by the corpus (where no licence file was found, the summary statistics are",
        "derived facts about public results, not a copy of the data):",
        "",
        "| family | source | repository | licence |",
        "| --- | --- | --- | --- |",
    ]
    for family in pop.families:
        row = info.loc[family]
        lines.append(f"| {family} | {row['source']} | {row['source_repo']} | {row['license']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reuse", action="store_true", help="keep the existing public.nc (report and demo data only)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the member fits (default 2)")
    args = parser.parse_args()
    runs_path = default_data_dir() / "runs.csv.gz"
    runs = pd.read_csv(runs_path)
    seconds = float("nan")
    if not args.reuse:
        from bayes_scaling.distributed import ProcessExecutor

        start = time.perf_counter()
        with ProcessExecutor(workers=args.workers) as executor:
            pop = population.build(
                runs_path, executor=executor, description="shared corpus runs.csv.gz, primary curves (see NOTICE.md)",
                progress=lambda f, s: print(f"  {f}: {s:.0f} s", file=sys.stderr),
            )
        seconds = time.perf_counter() - start
        pop.save(POPULATION_PATH)
    pop = population.load(POPULATION_PATH)
    DEMO_PATH.parent.mkdir(parents=True, exist_ok=True)
    demo = demo_curves(runs)
    with atomic_path(DEMO_PATH) as tmp:
        demo.to_csv(tmp, index=False, float_format="%.6g")
    atomic_write_text(NOTICE_PATH, notice(pop, pd.read_csv(default_data_dir() / "families.csv")))
    members = pop.members
    lines = [
        "# The public population (`bayes_scaling/populations/public.nc`)",
        "",
        f"Built by `benchmarks/build_shipped_data.py` on {platform.machine()} with {platform.processor() or 'a CPU'}, "
        f"{args.workers} worker processes, {os.cpu_count()} cores shared with other work; "
        + (f"build time {seconds / 60:.1f} min." if np.isfinite(seconds) else "build time: see the commit that built it (--reuse run)."),
        "",
        f"Settings: {pop.settings}",
        "",
        f"Provenance: {pop.provenance}",
        "",
        f"File size: {POPULATION_PATH.stat().st_size / 1024:.0f} KB; demo curves `{DEMO_PATH.name}`: {len(demo)} rows, "
        f"{DEMO_PATH.stat().st_size / 1024:.0f} KB.",
        "",
        f"{len(members)} members; max r_hat per member (2 chains, as computed when the file was built: `convergence.max_r_hat` over theta and the scales "
        f"since commit 4f5731a, the classic split r_hat of theta before): median {members['max_rhat'].median():.3f}, "
        f"{int((members['max_rhat'] > 1.05).sum())} above 1.05; divergences in all: {int(members['divergences'].sum())}.",
        "",
        "Each member's size discrepancy (`sigma_size`) comes from its extrapolation check "
        "(`population.extrapolation_check`): fitted to its smaller half of sizes, it predicts its largest; "
        "`extrap_residual` is the observed less the predicted mean log loss there, `extrap_sd` the prediction's sd "
        "without a size discrepancy, `extrap_distance` the e-folds of N extrapolated.",
        "",
        md_table(members.round(3)),
        "",
    ]
    atomic_write_text(REPORT_PATH, "\n".join(lines))
    print(f"wrote {POPULATION_PATH}, {DEMO_PATH}, {NOTICE_PATH} and {REPORT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
