"""One-line errors for the command-line entry points (``experiments.train``, ``experiments.evaluate``,
``experiments.build_cache``).

A user mistake (a bad or truncated cache, a missing checkpoint, an unknown policy, a malformed
JSONL / YAML file, a bad ``--set``) prints one line ``<prog>: error: <what>`` on stderr and
exits with code 2 (a bad argument) or 1 (a file that cannot be used), without a traceback;
``--debug`` (accepted by every wrapped command) re-raises it with the traceback. Anything else
(a bug) keeps its traceback.

Usage::

    if __name__ == "__main__":
        raise SystemExit(run_cli(main, prog="python -m experiments.train"))
"""

from __future__ import annotations

import json
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

DEBUG_FLAG = "--debug"
DEBUG_HELP = "show the traceback of an error instead of a one-line message"


class CliError(Exception):
    """A user mistake to report as one line; ``code``: the exit status (2: bad argument, 1: unusable file)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _user_errors() -> tuple[type[BaseException], ...]:
    from cache.schema import CacheError

    errors: list[type[BaseException]] = [CliError, CacheError, OSError, ValueError, json.JSONDecodeError]
    try:
        import yaml

        errors.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def exit_code(exc: BaseException) -> int:
    """2 for a bad argument, 1 for a file that cannot be used."""
    from cache.schema import CacheError

    if isinstance(exc, CliError):
        return exc.code
    if isinstance(exc, (CacheError, OSError)):
        return 1
    return 2


def message(exc: BaseException) -> str:
    """The exception as one line."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.filename}: {exc.strerror}"
    return " ".join(text.split())


def run_cli(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None, *, prog: str) -> int:
    """Run ``main(argv)``; a user mistake becomes ``prog: error: ...`` on stderr and exit code 1 / 2.

    ``--debug`` is taken out of ``argv`` (so ``main``'s parser need not know it) and makes the
    error raise with its traceback.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        rc = main(args)
    except _user_errors() as e:
        if debug:
            raise
        print(f"{prog}: error: {message(e)} (run with {DEBUG_FLAG} for the traceback)", file=sys.stderr, flush=True)
        return exit_code(e)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        return 130
    return int(rc or 0)


@contextmanager
def output_dir(path: str | Path) -> Iterator[Path]:
    """Create ``path`` (and missing parents) for a command's outputs; if the command fails,
    remove what this call created as long as nothing was written into it."""
    out = Path(path)
    created: list[Path] = []
    p = out
    while not p.exists():
        created.append(p)
        if p.parent == p:
            break
        p = p.parent
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        for d in created:  # innermost first
            if d.is_dir() and not any(f.is_file() for f in d.rglob("*")):
                shutil.rmtree(d, ignore_errors=True)
        raise


def torch_device(spec: str | None) -> Any:
    """The ``torch.device`` of a ``--device`` value; ``None`` means CUDA when torch sees a GPU, else
    the CPU. Asking for CUDA where torch sees none is a user mistake (:class:`CliError`), not the
    traceback torch would raise at the first tensor moved there."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise CliError(f"--device {spec!r}: {message(exc)}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {spec}: torch sees no CUDA GPU on this machine (use --device cpu)")
    return device
