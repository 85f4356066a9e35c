"""Executors and a resumable Parquet sink for :func:`bayes_scaling.backtest.run_cells`.

The back-test runner maps a pure function ``evaluate_cell(cell, seed)`` over cells with an
*executor* (``map_unordered(fn, items) -> iterator of (item, fn(item))`` in completion
order) and hands each finished cell's rows to a *sink*. This module adds:

* :class:`ProcessExecutor` - runs the cells in worker processes on this machine (standard
  library, no Ray); as with Ray, the numbers do not depend on which worker runs a cell.
* :class:`RayExecutor` - runs the cells as Ray tasks on a cluster (``address="HOST:PORT"``)
  or on a local Ray started on the loopback interface (the default). Each cell's seed is a
  hash of its key (:func:`bayes_scaling.backtest.cell_seed`), so the numbers do not depend
  on which worker or in which order a cell runs: same seeds, same numbers as
  :class:`~bayes_scaling.backtest.LocalExecutor`.
* :class:`ParquetSink` - writes every finished cell as its own Parquet file
  (``cell-<hash of key>.parquet``, written to a temporary name then renamed, so an
  interrupted run never leaves a half-written file), and knows which cells are done.
* :class:`ResumeExecutor` - wraps any executor; cells already in the sink are not run
  again, their stored rows are yielded instead, so a resumed run returns every row.

Ray is optional (``pip install 'bayes-scaling[ray]'``); nothing here imports it until a
:class:`RayExecutor` is made.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from .errors import DataError

RAY_HINT = "pip install 'bayes-scaling[ray]'"


def cell_key_of_row(row: dict) -> tuple:
    """The :attr:`bayes_scaling.backtest.Cell.key` of a result row."""
    return (float(row["min_tokens"]), str(row["family"]), int(row["k"]), float(row["fraction"]), str(row["estimator"]))


def _key_name(key: tuple) -> str:
    return "cell-" + hashlib.sha1(repr(key).encode()).hexdigest()[:20] + ".parquet"


def require_ray():
    """Import Ray or raise DataError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise DataError(f"the ray executor needs Ray, which is not installed: {RAY_HINT}") from exc
    return ray


class ParquetSink:
    """Write each finished cell's rows to ``directory/cell-<hash>.parquet`` as it arrives.

    Parameters
    ----------
    directory : path
        Created if missing. Existing cell files are kept: they are the finished cells of
        an earlier (possibly interrupted) run with the same settings.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        for tmp in self.directory.glob("*.parquet.tmp*"):  # left by a killed run
            tmp.unlink()

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("cell-*.parquet"))

    def stored(self) -> dict[tuple, list[dict]]:
        """Rows of the finished cells, by cell key."""
        out: dict[tuple, list[dict]] = {}
        for path in self._files():
            df = pd.read_parquet(path)
            rows = df.to_dict("records")
            if rows:
                out[cell_key_of_row(rows[0])] = rows
        return out

    def done_keys(self) -> set[tuple]:
        return set(self.stored())

    def __call__(self, rows: list[dict]) -> None:
        if not rows:
            return
        path = self.directory / _key_name(cell_key_of_row(rows[0]))
        if path.exists():
            return
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        pd.DataFrame(rows).to_parquet(tmp, index=False)
        os.replace(tmp, path)

    def read(self) -> pd.DataFrame:
        """All stored rows as one DataFrame (empty if none)."""
        frames = [pd.read_parquet(p) for p in self._files()]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class ResumeExecutor:
    """Skip cells whose rows are already stored; run the rest with ``inner``.

    Stored cells are yielded first, with their stored rows (so the runner's result and
    any other sinks still see every row); ``is_stored(cell)`` tells them apart.
    """

    def __init__(self, inner, stored: dict[tuple, list[dict]]):
        self.inner = inner
        self.stored = stored

    def is_stored(self, cell) -> bool:
        return cell.key in self.stored

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        todo = []
        for item in items:
            if item.key in self.stored:
                yield item, self.stored[item.key]
            else:
                todo.append(item)
        yield from self.inner.map_unordered(fn, todo)


def _call(fn, item):
    return fn(item)


def _set_environment(env: dict) -> None:
    os.environ.update({k: str(v) for k, v in env.items()})


#: Each worker process runs XLA on one thread: with one worker per core, more threads
#: would only fight over the same cores.
SINGLE_THREAD_ENV = {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


class ProcessExecutor:
    """Run ``fn(item)`` in ``workers`` processes of this machine, yielding ``(item, result)``
    as they complete.

    Processes are spawned (not forked: JAX is multithreaded), so ``fn`` and the items must
    be picklable, as for Ray. Each worker compiles its own samplers, so a worker pays the
    compilation of every shape bucket it meets once.

    Parameters
    ----------
    workers : int
        Worker processes (one per core is the sensible most).
    env : dict, optional
        Environment variables set in each worker before it imports JAX (default
        :data:`SINGLE_THREAD_ENV`).
    """

    def __init__(self, workers: int = 2, env: dict | None = None):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if int(workers) < 1:
            raise DataError(f"workers must be >= 1, got {workers!r}")
        self.workers = int(workers)
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_set_environment,
            initargs=(SINGLE_THREAD_ENV if env is None else env,),
        )

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        from concurrent.futures import FIRST_COMPLETED, wait

        it = iter(items)
        pending: dict = {}

        def submit():  # keep two cells per worker queued, not the whole grid
            for item in it:
                pending[self._pool.submit(_call, fn, item)] = item
                if len(pending) >= 2 * self.workers:
                    return

        submit()
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                yield item, future.result()
            submit()

    def close(self) -> None:
        """Stop the worker processes (waits for the cells they are running)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RayExecutor:
    """Run ``fn(item)`` as Ray tasks, yielding ``(item, result)`` as tasks complete.

    Parameters
    ----------
    address : str, optional
        ``HOST:PORT`` of a running Ray cluster (``ray start --head``). Default: start a
        private local Ray on 127.0.0.1, without dashboard, shut down by :meth:`close`.
    num_cpus : int
        CPUs of the local Ray (ignored with ``address``); one task per CPU.
    max_in_flight : int, optional
        Tasks submitted ahead (default: 2 x the cluster's CPUs), so that a huge grid does
        not sit in the object store at once.
    env : dict, optional
        Environment variables of the workers (e.g. ``{"JAX_PLATFORMS": "cpu"}``).
    """

    def __init__(self, address: str | None = None, num_cpus: int = 2, max_in_flight: int | None = None, env: dict | None = None):
        ray = require_ray()
        self._ray = ray
        self._owns = False
        runtime_env = {"env_vars": {k: str(v) for k, v in (env or {}).items()}} if env else None
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
            if address is None:
                ray.init(address="local", num_cpus=int(num_cpus), _node_ip_address="127.0.0.1", **kwargs)
            else:
                ray.init(address=address, **kwargs)
            self._owns = True
        cpus = int(ray.cluster_resources().get("CPU", num_cpus))
        self.max_in_flight = int(max_in_flight or 2 * max(cpus, 1))
        self._remote = ray.remote(num_cpus=1, max_retries=2)(_call)

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        ray = self._ray
        fn_ref = ray.put(fn)
        it = iter(items)
        pending: dict = {}

        def submit():
            for item in it:
                pending[self._remote.remote(fn_ref, item)] = item
                if len(pending) >= self.max_in_flight:
                    return

        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            item = pending.pop(ref)
            result = ray.get(ref)
            submit()
            yield item, result

    def close(self) -> None:
        """Shut down the local Ray this executor started, or disconnect from the cluster it joined
        (the cluster keeps running); a no-op when Ray was already initialised by the caller."""
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


EXECUTORS = ("local", "process", "ray")


def make_executor(name: str, *, address: str | None = None, num_cpus: int = 2):
    """``"local"`` -> LocalExecutor, ``"process"`` -> ProcessExecutor with ``num_cpus``
    workers, ``"ray"`` -> RayExecutor (DataError with the install command when Ray is
    missing)."""
    from .backtest import LocalExecutor

    if name not in EXECUTORS:
        raise DataError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
    if name != "ray" and address is not None:
        raise DataError("--address only applies to --executor ray")
    if name == "local":
        return LocalExecutor()
    if name == "process":
        return ProcessExecutor(workers=num_cpus)
    return RayExecutor(address=address, num_cpus=num_cpus)


def check_run_config(directory, config: dict) -> None:
    """Record the settings of a run in ``directory/run.json``; refuse to resume a run
    whose stored cells were made with different settings (they would be mixed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.json"
    config = json.loads(json.dumps(config, default=str))
    if path.exists():
        old = json.loads(path.read_text())
        if old != config and any(directory.glob("cell-*.parquet")):
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise DataError(
                f"{directory} holds cells of a run with other settings ({', '.join(diff)}); "
                "use another --out or --restart to discard them"
            )
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def frame_equal_numbers(a: pd.DataFrame, b: pd.DataFrame, ignore=("fit_seconds",)) -> bool:
    """Whether two result tables hold the same rows and numbers (order and timing ignored)."""
    from .backtest import ROW_KEY_COLUMNS

    cols = sorted((set(a.columns) & set(b.columns)) - set(ignore))
    if set(a.columns) - set(ignore) != set(b.columns) - set(ignore) or len(a) != len(b):
        return False
    a = a[cols].sort_values(list(ROW_KEY_COLUMNS)).reset_index(drop=True)
    b = b[cols].sort_values(list(ROW_KEY_COLUMNS)).reset_index(drop=True)
    for c in cols:
        x, y = a[c].to_numpy(), b[c].to_numpy()
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            if not np.array_equal(x.astype(float), y.astype(float), equal_nan=True):
                return False
        elif not (x == y).all():
            return False
    return True


# --------------------------------------------------------------------------- CLI glue

#: Settings that change a cell's numbers; a resumed run must use the same ones.
RESUME_SETTINGS = (
    "runs", "seed", "chains", "warmup", "draws", "max_checkpoints", "batch_size",
    "population_warmup", "population_draws", "population_size_scale", "population_summary",
)


def add_cli_arguments(parser) -> None:
    """``--executor``, ``--address``, ``--num-cpus`` and ``--restart`` of ``bayes-scaling backtest``."""
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help=f"where cells run: this process (local), --num-cpus worker processes (process) or Ray tasks (ray; needs {RAY_HINT})",
    )
    parser.add_argument("--address", default=None, metavar="HOST:PORT", help="Ray cluster to join (default: start a local Ray on 127.0.0.1)")
    parser.add_argument("--num-cpus", type=int, default=2, help="worker processes, or CPUs of the local Ray (default 2)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="fit Bayesian cells in vectorised chunks of this many (one JAX program per chunk; 0: one by one)",
    )
    parser.add_argument(
        "--restart", action="store_true", help="discard finished cells in OUT/cells instead of resuming from them"
    )


class CliRun:
    """Executor, resumable sinks and progress of one ``bayes-scaling backtest`` call.

    Finished cells go to ``OUT/cells/*.parquet`` as they complete (and to the CSV sink);
    cells already there are skipped. The progress bar counts only cells run now, so its
    rate and ETA are those of this run.
    """

    def __init__(self, args, out: Path, bar, csv_sink):
        if args.executor != "ray" and args.address is not None:
            raise DataError("--address only applies to --executor ray")
        if args.num_cpus < 1:
            raise DataError("--num-cpus must be >= 1")
        if args.batch_size < 0:
            raise DataError("--batch-size must be >= 0")
        cells_dir = Path(out) / "cells"
        if args.restart and cells_dir.exists():
            for p in list(cells_dir.glob("cell-*.parquet")) + [cells_dir / "run.json"]:
                if p.exists():
                    p.unlink()
        check_run_config(cells_dir, {k: getattr(args, k, None) for k in RESUME_SETTINGS})
        self.parquet = ParquetSink(cells_dir)
        stored = self.parquet.stored()
        self.n_stored = len(stored)
        self.bar = bar
        self.csv_sink = csv_sink
        inner = make_executor(args.executor, address=args.address, num_cpus=args.num_cpus)
        if args.batch_size:
            from .batched import BatchedExecutor

            inner = BatchedExecutor(inner, batch_size=args.batch_size)
        self.executor = ResumeExecutor(inner, stored)

    def sink(self, rows: list[dict]) -> None:
        self.parquet(rows)
        self.csv_sink(rows)

    def on_cells(self, cells) -> None:
        done = sum(1 for c in cells if self.executor.is_stored(c))
        self.bar.reset(total=len(cells) - done)
        if done:
            self.bar.set_postfix_str(f"{done} resumed from cells/")

    def progress(self, cell) -> None:
        if not self.executor.is_stored(cell):
            self.bar.update()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        close = getattr(self.executor.inner, "close", None)
        if close is not None:
            close()
