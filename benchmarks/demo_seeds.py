"""Does the real demo pass at its default settings whatever the seed?

Runs ``bayes-scaling demo --seed S`` (the README's main job: Gemstones' two smallest sizes
under the public population without its source group, 2 chains x (1000 + 1000)) for seeds
0..N-1, each in its own process as a user would, and reads the verdict, the worst r-hat and
bulk ESS, the divergences, the 90% coverage of the target and the median ARE from what it
prints. With ``--baseline REV`` the same seeds also run from a git worktree of revision REV,
interleaved with this checkout's. Writes ``benchmarks/results/demo_seeds.md``.

    python benchmarks/demo_seeds.py [--seeds 6] [--baseline REV]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling.backtest import md_table  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402
from benchmarks._versions import checkout_revision, version_trees  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "demo_seeds.md"
#: What the demo prints, and the column each becomes.
PATTERNS = {
    "verdict": r"^convergence: (\w+)",
    "sampler": r"(\d+ chains x \d+ draws)",
    "max_rhat": r"max r_hat\s+([0-9.]+)",
    "min_bulk_ess": r"min bulk ESS\s+([0-9]+)",
    "divergences": r"divergences\s+([0-9]+)",
    "coverage_90": r"coverage of 90% intervals: ([0-9.]+)%",
    "median_are": r"median absolute relative error: ([0-9.]+)%",
}


def parse(text: str) -> dict:
    """The demo's printed figures (None where a line is missing)."""
    row = {}
    for name, pattern in PATTERNS.items():
        hit = re.search(pattern, text, flags=re.MULTILINE)
        row[name] = None if hit is None else (hit.group(1) if name in ("verdict", "sampler") else float(hit.group(1)))
    return row


def run_demo(tree: Path, seed: int, out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bayes_scaling", "demo", "--seed", str(seed), "--no-progress", "--out", str(out)],
        cwd=tree, capture_output=True, text=True, check=True,
    )
    return {**parse(done.stdout + done.stderr), "seconds": round(time.perf_counter() - start, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 (default 6)")
    parser.add_argument("--baseline", metavar="REV", help="also run revision REV (a git worktree), interleaved")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work, version_trees(ROOT, args.baseline, Path(work)) as trees:
        for seed in range(args.seeds):
            for version, tree in trees.items():
                rows.append({"version": version, "seed": seed, **run_demo(tree, seed, Path(work) / f"{version}-{seed}")})
                print(rows[-1], file=sys.stderr)
    table = pd.DataFrame(rows)
    summary = table.groupby("version", sort=False).agg(
        sampler=("sampler", "first"),
        seeds=("seed", "size"),
        passed=("verdict", lambda v: int((v == "PASS").sum())),
        median_max_rhat=("max_rhat", "median"),
        median_min_bulk_ess=("min_bulk_ess", "median"),
        divergences=("divergences", "sum"),
        median_coverage_90=("coverage_90", "median"),
        median_are=("median_are", "median"),
    ).reset_index()
    this = checkout_revision(ROOT)
    lines = [
        "# The real demo across seeds (`benchmarks/demo_seeds.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other work, no accelerator; "
        f"`bayes-scaling demo --seed S` at its defaults, one process per run; this = working tree at {this}"
        + (f", baseline = {args.baseline}" if args.baseline else "") + f"; date {time.strftime('%Y-%m-%d', time.gmtime())}.",
        "",
        "Verdict PASS: r-hat <= 1.01, bulk and tail ESS >= 100 per chain, no divergences (`diagnostics.convergence_report`).",
        "",
        md_table(summary),
        "",
        "## Every run",
        "",
        md_table(table),
        "",
    ]
    atomic_write_text(RESULT, "\n".join(lines))
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
