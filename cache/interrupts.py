"""A Ctrl-C during a cache build is never lost.

Python turns SIGINT into ``KeyboardInterrupt`` in the main thread, but an exception raised while
a weakref callback or a ``__del__`` runs is only printed ("Exception ignored in ...") and the
program goes on: a Ctrl-C that lands there would let a build run to its end. Inside
:func:`interruptible` the SIGINT handler also records the signal, and the build calls
:func:`raise_if_interrupted` at each chunk boundary, which raises what was swallowed.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_interrupted = False


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Record SIGINT while the block runs (main thread, default handler only; else a no-op)."""
    global _interrupted
    if threading.current_thread() is not threading.main_thread() \
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    _interrupted = False
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _interrupted = False


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a SIGINT arrived inside :func:`interruptible` (its own
    ``KeyboardInterrupt`` may have been swallowed)."""
    if _interrupted:
        raise KeyboardInterrupt
