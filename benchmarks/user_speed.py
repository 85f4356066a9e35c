"""What a user feels: ``fit one-family.csv --population public`` then ``predict``, cold and warm.

Cold: fresh processes and an empty JAX compilation cache (first use after install). Warm:
the same commands again with the cache the cold run filled. Each command runs in its own
process, as a user types them; times are wall clock and include the package import. The
family is the real demo's training runs (Gemstones 48M and 52M, shipped with the package).
With ``--baseline REV`` the same commands also run from a git worktree of revision REV,
interleaved with this checkout's (same repeat, same cache state), so the two are compared
side by side on the same load. Writes ``benchmarks/results/user_speed.md``.

    python benchmarks/user_speed.py [--repeats 3] [--baseline REV]
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling.cellfit import SAMPLER_DEFAULTS  # noqa: E402
from bayes_scaling.demo import demo_runs  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402
from benchmarks._versions import checkout_revision, version_trees  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "user_speed.md"


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
    args = parser.parse_args()
    exe = [sys.executable, "-m", "bayes_scaling"]  # run from each version's tree: its package comes first on sys.path
    rows = []
    with tempfile.TemporaryDirectory() as work, version_trees(ROOT, args.baseline, Path(work)) as trees:
        work = Path(work)
        runs = demo_runs()
        one = work / "one-family.csv"
        runs[runs["num_params"] < runs["num_params"].max()].to_csv(one, index=False)
        fit_cmd = [*exe, "fit", str(one), "--population", "public", "--out", str(work / "fit.nc"), "--no-progress"]
        predict_cmd = [*exe, "predict", str(work / "fit.nc"), "--family", "gemstones", "--params", "2e9", "--tokens", "3.5e11", "--new-run"]
        for i in range(args.repeats):
            for label in ("cold", "warm"):
                for version, tree in trees.items():
                    env = {**os.environ, "BAYES_SCALING_CACHE_DIR": str(work / f"cache-{version}-{i}")}
                    env.pop("JAX_COMPILATION_CACHE_DIR", None)
                    f, p = timed(fit_cmd, env, tree), timed(predict_cmd, env, tree)
                    rows.append((version, i, label, f, p, f + p))
                    print(f"{version} repeat {i} {label}: fit {f:.1f} s, predict {p:.1f} s", file=sys.stderr)
    load = os.getloadavg()[0]
    revision = checkout_revision(ROOT)
    lines = [
        "# Speed a user feels: one family under the public population",
        "",
        f"`bayes-scaling fit one-family.csv --population public` (Gemstones 48M + 52M, default sampler of this "
        f"checkout: {SAMPLER_DEFAULTS['chains']} chains x ({SAMPLER_DEFAULTS['warmup']} + {SAMPLER_DEFAULTS['draws']})) then `bayes-scaling predict ... --new-run`, each in a fresh process; "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end. Bar (issue 17): cold <= 60 s, warm <= 15 s.",
        "",
        f"Versions: this = the checkout (HEAD {revision})"
        + (f", baseline = {args.baseline}, run interleaved with it." if args.baseline else "."),
        "",
        "| version | repeat | cache | fit s | predict s | total s |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {v} | {i} | {label} | {f:.1f} | {p:.1f} | {t:.1f} |" for v, i, label, f, p, t in rows],
        "",
        *[f"Median total, {v}: cold {_median(rows, v, 'cold'):.1f} s, warm {_median(rows, v, 'warm'):.1f} s." for v in trees],
        "",
    ]
    if args.baseline:
        lines += [
            f"Ratio this / baseline of the median totals: cold {_median(rows, 'this', 'cold') / _median(rows, 'baseline', 'cold'):.2f}, "
            f"warm {_median(rows, 'this', 'warm') / _median(rows, 'baseline', 'warm'):.2f}.",
            "",
        ]
    atomic_write_text(RESULT, "\n".join(lines))
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
