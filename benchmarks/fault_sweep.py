"""Fault sweep of the resumable back-test: kills, damaged cells, concurrent runs, changed input.

Every run is a real ``bayes-scaling backtest`` process (classic point fits, no NUTS) on a
synthetic runs table, so a sweep takes a few minutes on 2 cores:

* kill: interrupt a run at a random finished cell with SIGINT (sent to its process group,
  as Ctrl-C in a terminal does, workers included) or SIGKILL, sometimes twice in a row,
  then resume; with the in-process and the two-worker process executors;
* damaged: truncate, empty or swap random cell files of a finished run, then resume;
* concurrent: start two runs on one ``--out`` a moment apart (same settings; seeds 0 and 5);
* changed input: kill a run, change the losses of its runs file in place, resume (must be
  refused), then ``--restart``.

After each scenario the final ``backtest.csv`` is compared with a clean reference run:
cells lost and rows duplicated must be 0, numbers equal; a traceback in any process's
stderr counts as shown. Writes ``benchmarks/results/fault_sweep.md``.

    python benchmarks/fault_sweep.py [--seed 0] [--kills 6] [--families 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bayes_scaling import datasets  # noqa: E402
from bayes_scaling.backtest import CELL_KEY_COLUMNS, ROW_KEY_COLUMNS, md_table  # noqa: E402
from bayes_scaling.distributed import frame_equal_numbers  # noqa: E402
from bayes_scaling.outputs import atomic_write_text  # noqa: E402

SETTINGS = ["--estimators", "classic", "--min-tokens", "0", "--no-progress"]


class Sweep:
    """Runs the CLI in subprocesses and keeps every process's stderr."""

    def __init__(self, work: Path):
        self.work = work
        self.processes = 0
        self.tracebacks: list[str] = []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def start(self, runs: Path, out: Path, *extra) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "bayes_scaling", "backtest", str(runs), "--out", str(out), *SETTINGS, *map(str, extra)]
        self.processes += 1
        # a session of its own: SIGINT to the group reaches the workers as Ctrl-C would
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env, start_new_session=True)

    def finish(self, proc: subprocess.Popen, label: str) -> tuple[int, str]:
        _, err = proc.communicate(timeout=600)
        if "Traceback" in err:
            self.tracebacks.append(f"{label}: {err.strip().splitlines()[-1]}")
        return proc.returncode, err

    def run(self, runs, out, *extra, label="run") -> tuple[int, str]:
        return self.finish(self.start(runs, out, *extra), label)

    def kill_at(self, runs, out, n_cells: int, sig: int, *extra, label="kill") -> tuple[int, int]:
        """Start a run, send ``sig`` once ``n_cells`` cell files exist; (exit code, cells then)."""
        proc = self.start(runs, out, *extra)
        cells = out / "cells"
        while proc.poll() is None:
            if cells.is_dir() and sum(1 for _ in cells.glob("cell-*.parquet")) >= n_cells:
                os.killpg(proc.pid, sig) if sig == signal.SIGINT else proc.send_signal(sig)
                break
            time.sleep(0.005)
        if sig == signal.SIGKILL:
            proc.wait()
            _reap_workers(proc.pid)  # workers die with their parent (PR_SET_PDEATHSIG); make sure
        code, _ = self.finish(proc, label)
        return code, sum(1 for _ in cells.glob("cell-*.parquet")) if cells.is_dir() else 0


def _reap_workers(pgid: int) -> None:
    """Workers of a SIGKILLed parent notice it and exit; make sure none lingers on the cores."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _cells(df: pd.DataFrame) -> set:
    return set(map(tuple, df[list(CELL_KEY_COLUMNS)].drop_duplicates().to_numpy().tolist()))


def check(result_csv: Path, reference: pd.DataFrame) -> dict:
    """Cells lost, rows duplicated and whether the numbers equal the reference's."""
    want_cells = _cells(reference)
    if not result_csv.exists():
        return {"lost": len(want_cells), "duplicated": 0, "equal": False}
    got = pd.read_csv(result_csv)
    got_cells = _cells(got)
    return {
        "lost": len(want_cells - got_cells),
        "duplicated": int(got.duplicated(list(ROW_KEY_COLUMNS)).sum()),
        "equal": frame_equal_numbers(got, reference),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points and damage (default 0)")
    parser.add_argument("--kills", type=int, default=6, help="kill-and-resume scenarios (default 6)")
    parser.add_argument("--families", type=int, default=4, help="families of the synthetic table (default 4: 75 cells)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fault_sweep.md")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fault-sweep-"))
    sweep = Sweep(work)
    rows = []
    try:
        runs = work / "runs.csv"
        table, _ = datasets.synthetic(n_families=args.families, seed=3)
        table.to_csv(runs, index=False)
        code, _ = sweep.run(runs, work / "reference", label="reference")
        assert code == 0, "the reference run failed"
        reference = pd.read_csv(work / "reference" / "backtest.csv")
        n_cells = len(list((work / "reference" / "cells").glob("cell-*.parquet")))

        def record(scenario, detail, codes, result, expected_codes):
            rows.append({"scenario": scenario, "detail": detail, "exit codes": " ".join(map(str, codes)),
                         "as expected": codes == expected_codes, **result})

        # kills, then resume
        for i in range(args.kills):
            out = work / f"kill{i}"
            executor = ["--executor", "process", "--num-cpus", "2"] if i % 2 else []
            signals = [signal.SIGINT if rng.random() < 0.5 else signal.SIGKILL for _ in range(1 + (i % 3 == 2))]
            codes, at = [], []
            for sig in signals:
                done = len(list((out / "cells").glob("cell-*.parquet"))) if (out / "cells").is_dir() else 0
                target = int(rng.integers(done + 1, n_cells))
                code, _ = sweep.kill_at(runs, out, target, sig, *executor, label=f"kill{i}")
                codes.append(code)
                at.append(f"{signal.Signals(sig).name}@{target}")
            code, _ = sweep.run(runs, out, *executor, label=f"resume{i}")
            expected = [130 if s == signal.SIGINT else -9 for s in signals] + [0]
            # a run can finish before its signal arrives (exit 0): also fine
            expected = [c if c == 0 else e for c, e in zip(codes, expected[:-1])] + [0]
            record("kill + resume", f"{'process x2' if executor else 'local'}: {', '.join(at)} of {n_cells}", codes + [code], check(out / "backtest.csv", reference), expected)

        # damaged cell files
        out = work / "damaged"
        shutil.copytree(work / "reference", out)
        files = sorted((out / "cells").glob("cell-*.parquet"))
        picks = rng.choice(len(files), size=6, replace=False)
        for j, p in enumerate(picks):
            f = files[p]
            if j % 3 == 0:
                f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
            elif j % 3 == 1:
                f.write_bytes(b"")
            else:
                f.write_bytes(files[(p + 1) % len(files)].read_bytes())
        code, err = sweep.run(runs, out, label="damaged")
        record("damaged cells", "6 files: truncated, empty, another cell's rows", [code], check(out / "backtest.csv", reference), [0])

        # two runs on one --out, a moment apart
        for detail, seeds in (("same settings", (0, 0)), ("seeds 0 and 5", (0, 5))):
            out = work / f"concurrent-{seeds[1]}"
            first = sweep.start(runs, out, "--seed", seeds[0])
            time.sleep(1.0)
            second = sweep.start(runs, out, "--seed", seeds[1])
            (c1, _), (c2, e2) = sweep.finish(first, "concurrent"), sweep.finish(second, "concurrent")
            refused = c2 == 2 and "in use by another run" in e2
            seed_ok = json.loads((out / "cells" / "run.json").read_text())["seed"] == seeds[0]
            record("concurrent", f"{detail}: second {'refused' if refused else 'not refused'}; run.json seed {'matches' if seed_ok else 'DIFFERS'}",
                   [c1, c2], check(out / "backtest.csv", reference), [0, 2])

        # changed input at the same path: refused, then --restart
        out = work / "changed"
        changed = work / "changed.csv"
        table.to_csv(changed, index=False)
        target = int(rng.integers(1, n_cells))
        c1, _ = sweep.kill_at(changed, out, target, signal.SIGKILL, label="changed")
        table.assign(loss=table["loss"] * 1.3).to_csv(changed, index=False)
        c2, err = sweep.run(changed, out, label="changed-resume")
        refused = c2 == 2 and "another runs table" in err
        c3, _ = sweep.run(changed, out, "--restart", label="changed-restart")
        sweep.run(changed, work / "changed-reference", label="changed-reference")
        result = check(out / "backtest.csv", pd.read_csv(work / "changed-reference" / "backtest.csv"))
        record("changed input", f"SIGKILL@{target}, loss x1.3 in place: resume {'refused' if refused else 'NOT refused'}, then --restart",
               [c1, c2, c3], result, [c1, 2, 0])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    seconds = time.perf_counter() - start
    df = pd.DataFrame(rows)
    total = {"lost": int(df["lost"].sum()), "duplicated": int(df["duplicated"].sum()), "tracebacks": len(sweep.tracebacks)}
    ok = total["lost"] == 0 and total["duplicated"] == 0 and total["tracebacks"] == 0 and df["as expected"].all() and df["equal"].all()
    lines = [
        "# Fault sweep of the resumable back-test",
        "",
        (
            f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other developers, Python {platform.python_version()}. "
            f"Command: `python benchmarks/fault_sweep.py --seed {args.seed} --kills {args.kills} --families {args.families}` "
            f"({sweep.processes} back-test processes, {seconds:.0f} s). Table: `datasets.synthetic(n_families={args.families}, seed=3)`, "
            f"{n_cells} cells, `{' '.join(SETTINGS)}`."
        ),
        "",
        (
            "Exit codes: 0 done, 2 refused (one line on stderr), 130 interrupted by SIGINT, -9 killed by SIGKILL. "
            "`lost`: cells of the reference missing from the final backtest.csv; `duplicated`: rows whose key appears "
            "twice; `equal`: same rows and numbers as a clean run."
        ),
        "",
        md_table(df),
        "",
        (
            f"Totals: cells lost **{total['lost']}**, rows duplicated **{total['duplicated']}**, tracebacks shown "
            f"**{total['tracebacks']}**{': ' + '; '.join(sweep.tracebacks) if sweep.tracebacks else ''}. "
            f"Bar (all 0, every scenario as expected and equal to the reference): **{'met' if ok else 'NOT met'}**."
        ),
        "",
    ]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
