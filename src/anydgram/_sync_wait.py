"""What the blocking endpoints wait with: deadlines, and a waker that ends a ``poll()`` at once."""

from __future__ import annotations

import contextlib
import os
import time

__all__ = ("Waker", "deadline_after")


def deadline_after(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``timeout`` seconds from now (``None``: no deadline).

    Raises:
        TypeError: ``timeout`` is not a number or ``None``.
        ValueError: ``timeout`` is negative or NaN.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


class Waker:
    """A file descriptor that becomes readable, for good, when :meth:`wake` is called."""

    __slots__ = ("_write_fd", "fd")

    def __init__(self) -> None:
        self.fd = self._write_fd = -1
        if hasattr(os, "eventfd"):
            self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self._write_fd = -1
        else:  # pragma: no cover - non-Linux POSIX
            self.fd, self._write_fd = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._write_fd, False)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # already readable: that is all we need
            if self._write_fd < 0:
                os.eventfd_write(self.fd, 1)
            else:  # pragma: no cover - non-Linux POSIX
                os.write(self._write_fd, b"\0")

    def close(self) -> None:
        fds = (self.fd, self._write_fd)
        self.fd = self._write_fd = -1
        for fd in fds:
            if fd >= 0:
                os.close(fd)

    def __del__(self) -> None:
        # An endpoint dropped without close(): its socket is closed when collected, and so is
        # this descriptor, which would otherwise leak for the life of the process.
        self.close()
