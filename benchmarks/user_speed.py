"""What a user feels: ``fit one-family.csv --population public`` then ``predict``, cold and warm.

Cold: fresh processes and an empty JAX compilation cache (first use after install). Warm:
the same commands again with the cache the cold run filled. Each command runs in its own
process, as a user types them; times are wall clock and include the package import. The
family is the real demo's training runs (Gemstones 48M and 52M, shipped with the package).
Writes ``benchmarks/results/user_speed.md``.

    python benchmarks/user_speed.py [--repeats 3]
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

from bayes_scaling.demo import demo_runs  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "user_speed.md"


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    exe = [sys.executable, "-m", "bayes_scaling"]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        runs = demo_runs()
        one = work / "one-family.csv"
        runs[runs["num_params"] < runs["num_params"].max()].to_csv(one, index=False)
        fit_cmd = [*exe, "fit", str(one), "--population", "public", "--out", str(work / "fit.nc"), "--no-progress"]
        predict_cmd = [*exe, "predict", str(work / "fit.nc"), "--family", "gemstones", "--params", "2e9", "--tokens", "3.5e11", "--new-run"]
        for i in range(args.repeats):
            env = {**os.environ, "BAYES_SCALING_CACHE_DIR": str(work / f"cache-{i}")}
            env.pop("JAX_COMPILATION_CACHE_DIR", None)
            for label in ("cold", "warm"):
                f, p = timed(fit_cmd, env), timed(predict_cmd, env)
                rows.append((i, label, f, p, f + p))
                print(f"repeat {i} {label}: fit {f:.1f} s, predict {p:.1f} s", file=sys.stderr)
    load = os.getloadavg()[0]
    lines = [
        "# Speed a user feels: one family under the public population",
        "",
        f"`bayes-scaling fit one-family.csv --population public` (Gemstones 48M + 52M, default sampler: "
        f"2 chains x (1000 + 1000)) then `bayes-scaling predict ... --new-run`, each in a fresh process; "
        f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end. Bar (issue 17): cold <= 60 s, warm <= 15 s.",
        "",
        "| repeat | cache | fit s | predict s | total s |",
        "| --- | --- | --- | --- | --- |",
        *[f"| {i} | {label} | {f:.1f} | {p:.1f} | {t:.1f} |" for i, label, f, p, t in rows],
        "",
        f"Median total: cold {statistics.median(r[4] for r in rows if r[1] == 'cold'):.1f} s, "
        f"warm {statistics.median(r[4] for r in rows if r[1] == 'warm'):.1f} s.",
        "",
    ]
    atomic_write_text(RESULT, "\n".join(lines))
    print(f"wrote {RESULT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
