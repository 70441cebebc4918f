"""Opening a file of secrets or of security records for appending: ``--keylog`` and ``--audit-log``.

Theory of operation: a root daemon may be pointed at a path in a folder that other users can write to, where one of
them can put a symbolic link, a hard link, a FIFO or a file of their own before the daemon starts. The file is
therefore opened without following a symbolic link in its last component (``O_NOFOLLOW``) and without blocking on a
FIFO (``O_NONBLOCK``), and what was opened is then checked through its descriptor (no race with the path): a
regular file with one link, owned by the daemon's effective user. Only then is its mode set to 0600. The folders
above it are trusted: keep such files in a folder only that user can write to.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["open_private_append"]


def open_private_append(path: str) -> tuple[int, bool]:
    """Open ``path`` for appending (created 0600 if absent), refusing anything but our own regular file.

    Returns:
        The descriptor (blocking, close-on-exec) and whether this call created the file.

    Raises:
        OSError: the file cannot be opened or is refused (``strerror`` says why, in one line).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, "it is a symbolic link (refused)") from None
        if exc.errno == errno.ENXIO:  # a FIFO nobody reads, or a socket
            raise OSError(errno.ENXIO, "it is not a regular file (refused)") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file (refused)")
        if info.st_uid != os.geteuid():
            raise OSError(
                errno.EPERM,
                f"it is owned by uid {info.st_uid}, not by this daemon's user (uid {os.geteuid()}) (refused)",
            )
        if info.st_nlink != 1:
            raise OSError(errno.EMLINK, f"it has {info.st_nlink} hard links (refused)")
        os.fchmod(fd, 0o600)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, not existed
