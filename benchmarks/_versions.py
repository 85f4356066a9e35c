"""Shared by benchmarks that compare this checkout with a baseline git revision, side by side."""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def version_trees(root: Path, baseline: str | None, work: Path):
    """``{"baseline": worktree of REV, "this": root}`` (baseline first, so that interleaved runs
    start with it), or ``{"this": root}`` without a baseline; the worktree is removed on exit."""
    trees = {"this": root}
    if baseline:
        trees = {"baseline": work / "baseline", **trees}
        subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(trees["baseline"]), baseline], check=True)
    try:
        yield trees
    finally:
        if baseline:
            subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(trees["baseline"])], check=False)
