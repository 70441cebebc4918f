"""The standard streams as the commands use them: a closed, full or unreadable stream is a one-line error.

``python -m wgpy pubkey <&-`` leaves ``sys.stdin`` as ``None``, ``wgpy genkey > /dev/full`` makes the write (or the
flush at exit, when stdout is buffered) raise ``OSError``, and ``print`` to a closed stdout (``>&-``) silently prints
nothing. Commands read and write through ``read_stdin`` / ``write_stdout``, which turn each of these into a
``StreamError``; ``wgpy.cli.main`` prints its message as one line on stderr and exits with status 1.
"""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["StreamError", "discard_stdout", "read_stdin", "write_stdout"]


class StreamError(Exception):
    """A standard stream could not be used; ``str()`` is the one-line message."""


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def read_stdin(limit: int) -> bytes:
    """At most ``limit`` bytes of standard input (up to end of file).

    Raises:
        StreamError: stdin is closed or cannot be read.
    """
    stream = sys.stdin
    if stream is None:
        raise StreamError("cannot read standard input: it is closed")
    try:
        return stream.buffer.read(limit)
    except OSError as exc:
        raise StreamError(f"cannot read standard input: {_reason(exc)}") from None


def write_stdout(text: str) -> None:
    """Write ``text`` to standard output and flush it, so that a failure shows now, not at exit.

    Raises:
        StreamError: stdout is closed, full or otherwise cannot be written.
    """
    stream = sys.stdout
    if stream is None:
        raise StreamError("cannot write standard output: it is closed")
    try:
        stream.write(text)
        stream.flush()
    except OSError as exc:
        raise StreamError(f"cannot write standard output: {_reason(exc)}") from None


def discard_stdout() -> None:
    """After a failed write: point stdout at /dev/null, so that the interpreter's flush at exit cannot fail again
    and print its own "Exception ignored" report."""
    stream = sys.stdout
    if stream is None:
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
        stream.flush()
