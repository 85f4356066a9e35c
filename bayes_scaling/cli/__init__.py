"""The ``bayes-scaling`` command line.

The only place that sets the JAX platform, the host device count and progress bars. Each
command lives in its own module with ``register(subparsers)`` (adds its parser, sets
``func``) and ``run(args) -> int``. Errors users can fix (DataError, SpecError, FitError,
bad arguments, unwritable outputs) exit with code 2 and one line on stderr, never a
traceback; Ctrl-C prints one line and exits with 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import warnings

#: Command modules in ``bayes_scaling.cli``, in the order shown by ``--help``.
COMMAND_MODULES = ["core", "population", "diagnose", "decide", "plan", "backtest", "ingest"]


def configure_platform(platform: str, chains: int | None) -> None:
    """Select the JAX platform and give each chain a CPU device (before JAX initialises)."""
    import numpyro

    if platform != "auto":
        numpyro.set_platform(platform)
    if platform in ("auto", "cpu"):
        numpyro.set_host_device_count(max(int(chains or 0), os.cpu_count() or 1))
    enable_compilation_cache()


def enable_compilation_cache() -> None:
    """Keep compiled samplers between runs (JAX's persistent cache, and the traced programs
    of :mod:`bayes_scaling.programs` beside it): a second ``fit`` of the same shapes skips
    the tracing and compilation that dominate a one-family fit. JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` wins; ``BAYES_SCALING_CACHE_DIR`` moves ours (default
    ``~/.cache/bayes_scaling/jax``)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    path = os.environ.get("BAYES_SCALING_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "bayes_scaling", "jax")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # an unwritable home: run without the cache
        return
    jax.config.update("jax_compilation_cache_dir", path)
    # every compilation, however small: else a warm `predict` recompiles its small ops each time
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reads ``-7e9`` as a (negative) number, not as an unknown
    option, so that the value's own check refuses it by name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse's own pattern knows -7 and -7.5 but not -7e9 (a private attribute, stable since 3.2)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bayes-scaling",
        description="Bayesian scaling laws: predict LLM loss from smaller or partial runs, with uncertainty.",
    )
    parser.add_argument("--platform", choices=("auto", "cpu", "gpu"), default="auto", help="JAX platform (default: auto)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _one_line_warnings(command: str, fallback):
    """A ``warnings.showwarning`` that prints this package's warnings as ``COMMAND: warning:
    MESSAGE`` (not the source line); other warnings go to ``fallback``."""
    from ..errors import ConvergenceWarning, DataWarning, DecisionWarning, ExtrapolationWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (ConvergenceWarning, DataWarning, DecisionWarning, ExtrapolationWarning)):
            print(f"{command}: warning: {message}", file=sys.stderr)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def main(argv=None) -> int:
    """Entry point of the console script; returns the exit code."""
    command = "bayes-scaling"
    shown = warnings.showwarning
    try:
        from ..errors import BayesScalingError

        parser = build_parser()
        args = parser.parse_args(argv)
        command = f"bayes-scaling {args.command}"
        warnings.showwarning = _one_line_warnings(command, shown)
        configure_platform(args.platform, getattr(args, "chains", None))
        try:
            return int(args.func(args) or 0)
        except BayesScalingError as exc:
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # a path the user gave: missing, unwritable, a directory, a full disk
            print(f"{command}: error: {exc}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
