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


def checkout_revision(root: Path) -> str:
    """Short HEAD of ``root``, with " plus uncommitted changes" when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" plus uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else "")
