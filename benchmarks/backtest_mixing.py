"""Back-test diagnostic (issue 3): do the Bayesian cells that miss coverage just need longer chains?

    python benchmarks/backtest_mixing.py [--runs ../shared/data/runs.csv.gz] [--out benchmarks/results]

``--runs`` defaults to ``$BAYES_SCALING_DATA/runs.csv.gz`` (else the shared folder beside the repository).

Runs the ``bayes_hierarchical`` cells at the 1e10 cut, fraction 1.0, k = 3..5 of the
families whose 90% intervals missed in the back-test of 2026-11-29 twice, side by side:
short chains (2 x (300 + 300), what ``benchmarks/backtest.py`` used then) and long ones
(default 4 x (1000 + 1000)), with the population priors fitted as in
``benchmarks/backtest.py``. Writes ``backtest_mixing.csv`` (column ``chains_setting``) and
``backtest_mixing.md``: ARE, 90% coverage, interval width, max r_hat and divergences per
cell, short beside long.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import pandas as pd

from bayes_scaling import backtest as bt

HERE = Path(__file__).resolve().parent
#: Families whose k >= 3 hierarchical cells missed their 90% intervals in backtest.csv (2026-11-29).
MISSED = (
    "datablations-contour", "gemstones", "gemstones-cooldown", "opt", "overtrain-rpj",
    "xlstm-llama-ctx2048", "xlstm-llama-ctx8192", "xlstm-mlstm-ctx8192-gbs256",
)
#: Heading of the hand-written part of backtest_mixing.md, kept when the tables are rebuilt.
READING = "## Reading"
COLUMNS = dict(are=("are", "mean"), cov_90=("cov_90", "mean"), width_90=("width_90", "mean"), max_rhat=("max_rhat", "max"), divergences=("divergences", "max"))


def run(args) -> pd.DataFrame:
    """Both settings on the same cells; one row per target with ``chains_setting`` short/long."""
    table = bt.primary_table(args.runs)
    protocol = bt.protocol_cells(table, ks=args.ks, fractions=[1.0], min_tokens=[1e10], families=list(MISSED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the population as benchmarks/backtest.py fitted it when this diagnostic was run
        # (300 + 300, no size discrepancy, equal-weight mixture), so the recorded results reproduce
        priors, _ = bt.population_priors(
            table, MISSED, 1e10, seed=args.seed, chains=2, warmup=300, draws=300, size_scale=None, summary="mixture"
        )
        frames = []
        for setting, (chains, warmup, draws) in {"short": (2, 300, 300), "long": (args.chains, args.warmup, args.draws)}.items():
            cells = bt.build_cells(
                protocol, ["bayes_hierarchical"], bayes_ks=args.ks, bayes_fractions=[1.0], population={1e10: priors},
                bayes_settings=dict(chains=chains, warmup=warmup, draws=draws, max_tree_depth=8),
            )
            done = bt.run_cells(cells, seed=args.seed, progress=lambda c, s=setting: print(s, "done", c.key[1:3], flush=True))
            frames.append(done.assign(chains_setting=setting))
        return pd.concat(frames, ignore_index=True)


def summary(results: pd.DataFrame, args, seconds: float | None) -> str:
    a, b = (results[results.chains_setting == s].groupby(["family", "k"]).agg(**COLUMNS) for s in ("short", "long"))
    both = a.add_suffix(" short").join(b.add_suffix(" long")).reset_index()
    lines = [
        "# Back-test cells: short chains vs long chains",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores. Cells: bayes_hierarchical, cut 1e10, fraction 1.0, k in {args.ks}, "
        f"families {', '.join(MISSED)}. Short: 2 chains x (300 + 300). Long: {args.chains} chains x "
        f"({args.warmup} + {args.draws}), same population priors, seed {args.seed}."
        + (f" Wall time {seconds / 60:.1f} min." if seconds else ""),
        "",
        "| family | k | ARE short | ARE long | cov 90 short | cov 90 long | width 90 short | width 90 long | max r_hat short | max r_hat long | div short | div long |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in both.iterrows():
        lines.append(
            f"| {r['family']} | {r['k']} | {r['are short']:.3f} | {r['are long']:.3f} | {r['cov_90 short']:.2f} | {r['cov_90 long']:.2f} | "
            f"{r['width_90 short']:.3f} | {r['width_90 long']:.3f} | {r['max_rhat short']:.3f} | {r['max_rhat long']:.3f} | "
            f"{r['divergences short']:.0f} | {r['divergences long']:.0f} |"
        )
    lines += [
        "",
        "| k | mean 90% coverage short | long | cells with r_hat > 1.05 short | long | r_hat > 1.2 short | long |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, g in both.groupby("k"):
        lines.append(
            f"| {k} | {g['cov_90 short'].mean():.3f} | {g['cov_90 long'].mean():.3f} | {(g['max_rhat short'] > 1.05).sum()} | "
            f"{(g['max_rhat long'] > 1.05).sum()} | {(g['max_rhat short'] > 1.2).sum()} | {(g['max_rhat long'] > 1.2).sum()} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path(os.environ.get("BAYES_SCALING_DATA", HERE.parent.parent / "shared" / "data")) / "runs.csv.gz")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summarize-only", action="store_true", help="rebuild the Markdown from an existing backtest_mixing.csv")
    args = parser.parse_args(argv)
    csv = args.out / "backtest_mixing.csv"
    seconds = None
    if args.summarize_only:
        results = pd.read_csv(csv)
    else:
        started = time.perf_counter()
        results = run(args)
        seconds = time.perf_counter() - started
        bt.scores_only(results).to_csv(csv, index=False)  # the corpus's losses stay out of the repository
    md = args.out / "backtest_mixing.md"
    # keep the hand-written reading below the generated tables
    notes = md.read_text().partition(READING)[2] if md.exists() else ""
    md.write_text(summary(results, args, seconds) + (f"\n{READING}{notes}" if notes else ""))
    print(f"wrote {args.out / 'backtest_mixing.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
