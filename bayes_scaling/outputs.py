"""Results on disk: checked before the work, written atomically after it.

Every file of results is written to a temporary name in its own directory and renamed
into place (``os.replace`` is atomic on one file system), so a crash, a kill or a full
disk leaves either the old file or the new one, never half of one. Output paths are
checked *before* a long computation (:func:`require_writable_file`,
:func:`require_writable_dir`): a read-only directory or a path through a file is reported
in a second, not after minutes of sampling.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError


def _first_existing_parent(path: Path) -> Path:
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(".")


def _probe_writable(directory: Path, what: str) -> None:
    """Create and remove a file in ``directory``; OutputError when that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".bayes-scaling-probe-", dir=directory)
    except OSError as exc:
        raise OutputError(f"cannot write {what}: directory {directory} is not writable ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)


def require_writable_dir(path, what: str = "output directory") -> Path:
    """Create ``path`` (and parents) if missing and check that files can be written in it.

    Raises
    ------
    OutputError
        ``path`` or one of its parents is an existing file, or the directory is not writable.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} exists and is not a directory")
    blocking = _first_existing_parent(path / "x")
    if not blocking.is_dir():
        raise OutputError(f"{what} {path} lies under {blocking}, which is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {path}: {exc.strerror or exc}") from exc
    _probe_writable(path, f"{what} {path}")
    return path


def require_writable_file(path, what: str = "output file") -> Path:
    """Check that ``path`` can be written (creating its parent directories); returns it.

    Raises
    ------
    OutputError
        ``path`` is a directory, a parent is a file, or the directory is not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name")
    blocking = _first_existing_parent(path)
    if not blocking.is_dir():
        raise OutputError(f"{what} {path} lies under {blocking}, which is a file, not a directory")
    require_writable_dir(path.parent, f"directory of {what} {path}")
    return path


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


__all__ = ["atomic_path", "atomic_write_text", "require_writable_dir", "require_writable_file"]
