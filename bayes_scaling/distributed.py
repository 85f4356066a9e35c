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
* :class:`BatchedExecutor` - wraps any executor; Bayesian cells are fitted in chunks, each
  chunk one vectorised program (:func:`bayes_scaling.batched.fit_cells_batched`).

Ray is optional (``pip install 'bayes-scaling[ray]'``); nothing here imports it until a
:class:`RayExecutor` is made.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pandas as pd

from .errors import DataError, OutputError
from .outputs import atomic_write_text

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
        an earlier (possibly interrupted) run with the same settings. A cell file that
        cannot be read, is empty or holds rows of another cell than its name says is
        damaged: :meth:`stored` renames it to ``*.parquet.damaged`` (listed in
        :attr:`damaged`) so that the cell is fitted again.
    """

    def __init__(self, directory):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.damaged: list[Path] = []
        for tmp in self.directory.glob("*.parquet.tmp*"):  # left by a killed run
            tmp.unlink()

    def _files(self) -> list[Path]:
        return sorted(self.directory.glob("cell-*.parquet"))

    def _read_cell(self, path: Path) -> tuple[tuple, list[dict]] | None:
        """(key, rows) of one cell file, or None when it is damaged."""
        try:
            rows = pd.read_parquet(path).to_dict("records")
            keys = {cell_key_of_row(row) for row in rows}
        except Exception:  # noqa: BLE001 - any unreadable file is damaged, whatever the reader raises
            return None
        if len(keys) != 1:
            return None
        (key,) = keys
        return (key, rows) if _key_name(key) == path.name else None

    def stored(self) -> dict[tuple, list[dict]]:
        """Rows of the finished cells, by cell key; damaged files are set aside."""
        out: dict[tuple, list[dict]] = {}
        for path in self._files():
            cell = self._read_cell(path)
            if cell is None:
                aside = path.with_name(path.name + ".damaged")
                os.replace(path, aside)
                self.damaged.append(aside)
            else:
                out[cell[0]] = cell[1]
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
        rows = [row for cell_rows in self.stored().values() for row in cell_rows]
        return pd.DataFrame(rows)


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
    # Ctrl-C reaches every process of the terminal's group: the parent handles it (one
    # line, exit 130) and stops the workers; a worker's own KeyboardInterrupt would only
    # print a traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ.update({k: str(v) for k, v in env.items()})


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when its parent dies (a SIGKILLed run):
    an orphaned pool worker would otherwise wait on its task queue forever."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


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

    def close(self, terminate: bool = False) -> None:
        """Stop the worker processes: wait for the cells they are running, or with
        ``terminate`` kill them (an interrupted run: those cells are refitted on resume)."""
        if terminate:
            # the pool has no public way to stop running tasks before Python 3.14
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not terminate, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(terminate=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


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


def input_fingerprint(runs) -> str:
    """SHA-256 of a runs table's content: of the file's bytes for a path (however the path
    is spelled), of the values for a DataFrame. A resumed run compares it with the one its
    cells were made from."""
    digest = hashlib.sha256()
    if isinstance(runs, pd.DataFrame):
        digest.update(pd.util.hash_pandas_object(runs, index=False).to_numpy().tobytes())
        digest.update(repr(list(runs.columns)).encode())
        return digest.hexdigest()
    path = Path(runs)
    if not path.is_file():
        raise DataError(f"runs file not found: {path}")
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_run_config(directory, config: dict) -> None:
    """Record the settings of a run in ``directory/run.json``; refuse to resume a run
    whose stored cells were made with different settings or another runs table (they
    would be mixed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "run.json"
    config = json.loads(json.dumps(config, default=str))
    has_cells = any(directory.glob("cell-*.parquet"))
    if has_cells:
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            raise DataError(
                f"{directory} holds cells but no readable run.json to check their settings against; "
                "use another --out or --restart to discard them"
            ) from None
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            what = "was made from another runs table (its content changed)" if diff == ["runs_sha256"] else f"holds cells of a run with other settings ({', '.join(diff)})"
            raise DataError(f"{directory} {what}; use another --out or --restart to discard them")
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True))


LOCK_NAME = ".lock"


class OutputLock:
    """Exclusive use of an output directory by one run, through ``directory/.lock``.

    An advisory ``flock`` on the file, which holds the owner's host and pid for the
    message of a refused run. The kernel drops the lock when its process dies however it
    dies (SIGKILL included), so a stale lock never needs clearing by hand.
    """

    def __init__(self, directory):
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"{self.path.parent} is in use by another run ({owner}); wait for it to finish or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


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


# --------------------------------------------------------------------------- batched cells


def _problem_of(cell, seed: int):
    from .backtest import cell_seed
    from .batched import CellProblem
    from .cellfit import effective_weights
    from .laws import centre

    d = cell.data
    x_n, x_d = centre(d.train_num_params, d.train_tokens)
    x_n, x_d, log_loss = np.asarray(x_n), np.asarray(x_d), np.log(d.train_loss)
    weight = effective_weights(x_n, x_d, d.train_run, log_loss)
    return CellProblem(x_n, x_d, d.train_run, log_loss, cell.prior, cell_seed(cell.key, seed), weight)


def evaluate_chunk(cells: list, seed: int = 0) -> list[tuple]:
    """Fit a chunk of Bayesian back-test cells in one batched program, then score each
    with :func:`bayes_scaling.backtest.evaluate_cell`; returns ``[(cell, rows), ...]``.

    All cells of a chunk must share sampler settings. ``fit_seconds`` of each row is the
    chunk's wall time divided by its number of cells.
    """
    from .backtest import evaluate_cell
    from .batched import fit_cells_batched

    start = time.perf_counter()
    settings = dict(cells[0].settings)
    posts = fit_cells_batched(
        [_problem_of(c, seed) for c in cells],
        chains=int(settings["chains"]),
        warmup=int(settings["warmup"]),
        draws=int(settings["draws"]),
        target_accept=float(settings["target_accept"]),
        max_tree_depth=int(settings["max_tree_depth"]),
        retry_thinning=int(settings.get("retry_thinning", 1)),
        tempering=bool(settings.get("tempering", False)),
    )
    out = [(cell, evaluate_cell(cell, seed, posterior=post)) for cell, post in zip(cells, posts)]
    per_cell = (time.perf_counter() - start) / len(cells)
    for _, rows in out:
        for row in rows:
            row["fit_seconds"] = per_cell
    return out


class BatchedExecutor:
    """Back-test executor that fits Bayesian cells in vectorised chunks.

    Cells with a fixed prior (``bayes_independent``: a :class:`~bayes_scaling.cellfit.CellPrior`)
    are sorted by (settings, shape bucket, key), cut into chunks of ``batch_size`` and each
    chunk is one :func:`evaluate_chunk` call; point-fit cells and cells under a population
    (``bayes_hierarchical``, scored through ``bs.fit`` itself, the path users run) run one
    by one. All go through ``inner`` (default in this process; a
    :class:`~bayes_scaling.distributed.RayExecutor` runs chunks as Ray tasks). Chunks
    depend only on the cell list, so every inner executor gives the same numbers.

    Only understands ``fn = functools.partial(evaluate_cell, seed=...)`` (what
    :func:`bayes_scaling.backtest.run_cells` passes); any other ``fn`` is mapped by ``inner``.
    """

    def __init__(self, inner=None, batch_size: int = 64):
        from .backtest import LocalExecutor

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.inner = inner or LocalExecutor()
        self.batch_size = int(batch_size)

    def map_unordered(self, fn: Callable, items: Iterable) -> Iterator:
        from .backtest import evaluate_cell
        from .cellfit import CellPrior

        if not (isinstance(fn, functools.partial) and fn.func is evaluate_cell and not fn.args):
            yield from self.inner.map_unordered(fn, items)
            return
        seed = int(fn.keywords.get("seed", 0))
        items = list(items)
        bayes = [c for c in items if isinstance(c.prior, CellPrior)]
        one_by_one = [c for c in items if not isinstance(c.prior, CellPrior)]

        # one sort key per cell: (settings, shape bucket) must match within a chunk
        keyed = sorted((((repr(c.settings), _problem_of(c, seed).bucket(), repr(c.key)), c) for c in bayes), key=lambda kc: kc[0])
        chunks, current, group = [], [], None
        for key, c in keyed:
            if current and (len(current) == self.batch_size or key[:2] != group):
                chunks.append(current)
                current = []
            group = key[:2]
            current.append(c)
        if current:
            chunks.append(current)
        work = [("chunk", ch) for ch in chunks] + [("cell", c) for c in one_by_one]
        for (kind, _), result in self.inner.map_unordered(functools.partial(_run_work, seed=seed), work):
            yield from result

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def _run_work(work, seed: int = 0):
    from .backtest import evaluate_cell

    kind, payload = work
    if kind == "chunk":
        return evaluate_chunk(payload, seed)
    return [(payload, evaluate_cell(payload, seed))]
