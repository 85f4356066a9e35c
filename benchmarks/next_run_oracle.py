"""Could any choice of whole pilot sizes meet issue 21's bar? An oracle for ``next_run.py``.

    python benchmarks/next_run_oracle.py [--runs ../shared/data/runs.csv.gz] [--seed 0] [--work DIR] [--workers 2]
    python benchmarks/next_run_oracle.py [--seed 0] --report-only

The bar asks the information strategy to reach next-size-up's final 90% width at the target
with at most 60% of the ladder's compute. Whatever a planner ranks, it can only end in some
set of the family's pilot sizes. This script fits *every* set that contains the smallest size
and costs at most that share, exactly as ``next_run.py`` fits a state (same families, pilot
sizes, population priors, sampler, state seeds and scores: ``next_run.fit_state``), and asks
whether any of them is as narrow as next-size-up's final state: every pilot size, fitted here
too at the same seed (at ``next_run.py``'s seed it is the same fit as its final state).

Per family, the oracle share is the smallest compute share among the sets that reach that
width (inf: none within the bar). A median oracle share above the bar means no strategy over
whole sizes can meet it under this model; at or below, the miss is the ranking. The coverage
of the reaching sets says whether they reach it honestly. At ``next_run.py``'s seed, widths of
sets that ``next_run.csv`` also holds are compared, as a check that the two scripts fit the
same states, and the information strategy's share is shown beside the oracle's.

Writes ``results/next_run_oracle.csv`` (as the sets come; a rerun fits only the sets not in
it) and ``results/next_run_oracle.md``; ``next_run_oracle_seed<S>.*`` at another seed. A
diagnostic: nothing here changes the method.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import next_run as nr  # noqa: E402  (sets the one-thread environment before JAX loads)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bayes_scaling.outputs import atomic_write_text  # noqa: E402


def affordable_sets(setup, ratio=nr.BAR_RATIO):
    """Every set of pilot sizes holding the smallest whose compute is at most ``ratio`` of the ladder's."""
    sizes, cost, total = setup["sizes"], setup["cost"], nr.ladder_total(setup)
    for r in range(len(sizes)):
        for extra in itertools.combinations(sizes[1:], r):
            chosen = [sizes[0], *extra]
            share = sum(cost[s] for s in chosen) / total
            if share <= ratio * (1 + 1e-9):
                yield chosen, share


def sets_to_fit(setup):
    """The affordable sets (:func:`affordable_sets`) and the whole ladder, whose width is the goal."""
    yield from affordable_sets(setup)
    yield list(setup["sizes"]), 1.0


def _fit_one(task):
    family, setup, prior, settings, seed, sizes, share = task
    post, _, seconds, scores = nr.fit_state(family, setup, prior, settings, seed, sizes)
    return {"family": family, "sizes": nr.sizes_label(sizes), "n_sizes": len(sizes), "share": share,
            "max_rhat": post.max_rhat, "divergences": post.divergences, "fit_seconds": seconds,
            **{k: scores[k] for k in ("are", "cov_90", "width_90")}}


def oracle_table(sets: pd.DataFrame, ladder: pd.DataFrame | None) -> pd.DataFrame:
    """Per family: next-size-up's final width (the full ladder's row of ``sets``), the narrowest
    affordable set, the oracle share and its coverage; with ``ladder`` (``next_run.csv`` of the
    same seed), the information strategy's share."""
    rows = []
    for family, g in sets.groupby("family", sort=True):
        whole = g.loc[g["share"] >= 1 - 1e-9, "width_90"]
        if whole.empty:
            raise SystemExit(f"{family}: no fit of the whole ladder in the table (written before it was fitted?); run without --report-only to fit it")
        goal = float(whole.iloc[0])
        g = g[g["share"] <= nr.BAR_RATIO * (1 + 1e-9)]
        reach = g[g["width_90"] <= goal * (1 + 1e-9)].sort_values("share")
        narrow = g.sort_values("width_90").iloc[0]
        row = {
            "family": family, "affordable sets": len(g), "next_size_up final width_90": goal,
            "narrowest affordable width_90": float(narrow["width_90"]), "its sizes": narrow["sizes"],
            "oracle share": float(reach["share"].iloc[0]) if len(reach) else np.inf,
            "reaching set covers (cov_90)": float(reach["cov_90"].iloc[0]) if len(reach) else np.nan,
        }
        if ladder is not None:
            row["information share (next_run.csv)"] = nr.matched_ratio(ladder[ladder["family"] == family], "information")
        rows.append(row)
    return pd.DataFrame(rows)


def same_states(sets: pd.DataFrame, ladder: pd.DataFrame) -> pd.DataFrame:
    """The sets both scripts fitted, with both widths."""
    theirs = ladder.drop_duplicates(["family", "sizes"])[["family", "sizes", "width_90"]]
    return sets.merge(theirs, on=["family", "sizes"], suffixes=("", "_next_run"))


def report(sets: pd.DataFrame, ladder: pd.DataFrame | None, meta: dict) -> str:
    """The Markdown report; ``ladder``: ``next_run.csv`` when it was run at the same seed, else None."""
    table = oracle_table(sets, ladder)
    shares = table["oracle share"].to_numpy()
    med, lo, hi = nr.bootstrap_median(np.where(np.isfinite(shares), shares, 10.0))
    reached = table[np.isfinite(shares)]
    n = len(table)
    cov = float(reached["reaching set covers (cov_90)"].mean()) if len(reached) else np.nan
    c_lo, c_hi = nr.chance_range(len(reached)) if len(reached) else (np.nan, np.nan)
    lines = [
        "# Could any choice of whole pilot sizes meet issue 21's bar? (`benchmarks/next_run_oracle.py`)", "",
        "Every set of a family's pilot sizes that holds the smallest and costs at most "
        f"{nr.BAR_RATIO:.0%} of the next-size-up ladder's compute, fitted as `next_run.py` fits a state. "
        "Oracle share: the smallest share among the sets whose 90% width at the target is at most next-size-up's final "
        "width (inf: none within the bar).", "",
        *[f"- {k}: {v}" for k, v in meta.items()], "",
        nr.md_table(table), "",
        f"- **{len(reached)} of {n} families** have a set within {nr.BAR_RATIO:.0%} of the compute that reaches next-size-up's "
        f"final width; median oracle share {med:.2f} (90% bootstrap interval over families {lo:.2f}-{hi:.2f}; none within "
        "the bar = counted as 10).",
        f"- The reaching sets cover the target's checkpoints at 90% in {100 * cov:.0f}% on average over those families "
        f"(a calibrated interval shows {100 * c_lo:.0f}-{100 * c_hi:.0f}% by chance over {len(reached)}).",
        f"- Bar reachable by some whole-size strategy (median oracle share <= {nr.BAR_RATIO}): "
        f"**{'yes' if med <= nr.BAR_RATIO else 'no'}**.",
    ]
    if ladder is not None:
        both = same_states(sets, ladder)
        diff = (both["width_90"] - both["width_90_next_run"]).abs()
        lines.append(f"- Check: {len(both)} sets were fitted by both scripts; their width_90 differ by at most {diff.max():.2g} "
                     f"(median {diff.median():.2g}).")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=str(nr.DEFAULT_RUNS))
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--work", default=None, help="directory of next_run.py's cached population priors (default: its temp dir)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=None, help="population and state seed (default: next_run.py's, from next_run_meta.json)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    ladder = pd.read_csv(args.results / "next_run.csv")
    ladder_seed = int(json.loads((args.results / "next_run_meta.json").read_text())["seed"])
    seed = ladder_seed if args.seed is None else args.seed
    stem = "next_run_oracle" if seed == ladder_seed else f"next_run_oracle_seed{seed}"
    csv_path, md_path, meta_path = (args.results / f"{stem}.{ext}" for ext in ("csv", "md", "json"))
    same_seed_ladder = ladder if seed == ladder_seed else None
    if args.report_only:
        atomic_write_text(md_path, report(pd.read_csv(csv_path), same_seed_ladder, json.loads(meta_path.read_text())))
        return 0
    settings = nr.DEFAULT_SETTINGS


    table = nr.load_table(args.runs)
    families = sorted(ladder["family"].unique())
    setups = {f: nr.family_setup(table, f) for f in families}
    work = Path(args.work) if args.work else nr.DEFAULT_WORK
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    priors, _ = nr.cached_priors(args.runs, sorted(setups, key=lambda f: (setups[f]["n_runs"], f)), settings, seed, work)
    rows = pd.read_csv(csv_path).to_dict("records") if csv_path.is_file() else []  # a rerun resumes
    done_sets = {(r["family"], r["sizes"]) for r in rows}
    tasks = [(f, setups[f], priors[f], settings, seed, sizes, share) for f in families for sizes, share in sets_to_fit(setups[f])
             if (f, nr.sizes_label(sizes)) not in done_sets]
    nr.log(f"{len(tasks)} sets to fit over {len(families)} families ({len(rows)} already in {csv_path.name}), {args.workers} workers")

    def write_sets():
        sets = pd.DataFrame(rows).sort_values(["family", "share"]).reset_index(drop=True)
        with nr.atomic_path(csv_path) as tmp:
            sets.to_csv(tmp, index=False)
        return sets

    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for n_done, done in enumerate(as_completed([pool.submit(_fit_one, t) for t in tasks]), 1):
            rows.append(done.result())
            if n_done % 20 == 0 or n_done == len(tasks):
                write_sets()
                nr.log(f"{n_done} / {len(tasks)} sets")
    sets = write_sets()
    before = json.loads(meta_path.read_text()) if done_sets and meta_path.is_file() else {}  # a resumed run adds up
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; {time.strftime('%Y-%m-%d')}",
        "states": f"next_run.fit_state: cellfit.fit_cell, {settings['chains']} chains x ({settings['warmup']} + {settings['draws']}), "
                  f"population priors as next_run.py (seed {seed}), state seeds next_run.state_seed",
        "sets fitted": before.get("sets fitted", 0) + len(tasks),
        "wall seconds": round(before.get("wall seconds", 0.0) + time.perf_counter() - start, 1),
        "workers": args.workers,
    }
    atomic_write_text(meta_path, json.dumps(meta, indent=1))
    atomic_write_text(md_path, report(sets, same_seed_ladder, meta))
    print(md_path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
