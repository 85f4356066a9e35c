"""Hugging Face Trainer state files (``trainer_state.json``).

``Trainer`` saves its state in each ``checkpoint-N/`` directory of a run's output
directory (and at the top after ``save_state()``). ``log_history`` is a list of dicts:
training entries (``loss``, ``learning_rate``, ``grad_norm``, ``epoch``, and
``num_input_tokens_seen`` with ``include_num_input_tokens_seen``), evaluation entries
(``eval_loss``, ...) and a final summary (``train_loss``, ``train_runtime``, ...), each with
the optimizer ``step``. Top-level ``global_step``, ``max_steps``,
``num_input_tokens_seen`` and ``total_flos`` describe the run as a whole.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import DataError
from .logs import Curve, RunLog, RunRef, read_ref, walk_files

__all__ = ["STATE_FILE", "find_runs", "read_state", "run_name_of", "state_file_ref"]

STATE_FILE = "trainer_state.json"
_CHECKPOINT_DIR = re.compile(r"checkpoint-\d+")
#: Top-level fields kept in ``RunLog.attrs`` when present and positive.
RUN_FIELDS = ("global_step", "max_steps", "num_input_tokens_seen", "total_flos")


def run_name_of(path: Path, root: Path) -> str:
    """A state's run: its directory, or the directory above ``checkpoint-N/``, below ``root``."""
    run_dir = Path(path).parent
    if _CHECKPOINT_DIR.fullmatch(run_dir.name) and run_dir != Path(root):
        run_dir = run_dir.parent
    rel = Path(os.path.relpath(run_dir, root)).as_posix()
    return Path(root).resolve().name if rel == "." else rel


def state_file_ref(path: Path) -> RunRef:
    """A state file given on its own: the run is its directory (or the one above ``checkpoint-N/``)."""
    path = Path(path)
    root = path.parent.parent if _CHECKPOINT_DIR.fullmatch(path.parent.name) else path.parent
    log = read_state(path, run_name_of(path, root))
    return read_ref(log, str(path))


def find_runs(directory: Path) -> list[RunRef]:
    """One run per output directory below ``directory``: its most advanced state file.

    Each checkpoint's state holds the whole log history up to that checkpoint, so the one
    with the largest ``global_step`` holds everything.
    """
    best: dict[str, tuple[int, RunLog]] = {}
    for root, files in walk_files(directory):
        if STATE_FILE in files:
            path = Path(root) / STATE_FILE
            name = run_name_of(path, Path(directory))
            log = read_state(path, name)
            step = int(log.attrs.get("global_step", 0))
            if name not in best or step >= best[name][0]:
                best[name] = (step, log)
    return [read_ref(log, log.sources[0]) for _, log in best.values()]


def read_state(path: Path, name: str) -> RunLog:
    """Read one ``trainer_state.json`` into a RunLog named ``name``."""
    try:
        state = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as JSON: {exc}") from exc
    history = state.get("log_history") if isinstance(state, dict) else None
    if not isinstance(history, list):
        raise DataError(f"{path}: not a Trainer state: no 'log_history' list")
    entries = [e for e in history if isinstance(e, dict) and isinstance(e.get("step"), int)]
    if not entries:
        raise DataError(f"{path}: 'log_history' has no entries with a 'step': no loss lines")
    columns: dict[str, tuple[list, list]] = {}
    for entry in entries:
        for key, value in entry.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                steps, values = columns.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(value)
    curves = {
        key: Curve(np.asarray(s, dtype=np.int64), np.asarray(v, dtype=float), np.zeros(len(s), dtype=np.int32))
        for key, (s, v) in columns.items()
    }
    attrs = {k: state[k] for k in RUN_FIELDS if isinstance(state.get(k), (int, float)) and not isinstance(state.get(k), bool) and state[k] > 0}
    return RunLog(name, "trainer_state", (str(path),), curves, tuple(sorted(curves)), attrs)

