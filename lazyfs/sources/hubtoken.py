"""The hub token a mount sends, kept current: a ``--token-file`` is read again when it changes,
without a remount.

Kubernetes rotates a projected secret by writing the new files into a fresh directory and
swapping the ``..data`` symlink to it: the path stays, the file behind it is another one, so
watching one inode (inotify) would miss it. Instead, when a request is about to go out and
``CHECK_SECONDS`` have passed since the last look, the file's stat (through its symlinks) is
compared with the one it had when it was last read, and the file is read again if it differs.
A hub that refuses the token (401) makes the file be read again at once (``refused``), so a
rotation counts from the first refusal, not from the next look. A file that cannot be read
then, or holds no token, keeps the token in use, with one warning: the mount goes on, and the
hub's answer says the rest.

The look is a ``stat`` and at most a read of a few bytes, on the event loop's thread: at most
once every ``CHECK_SECONDS`` and once per refusal, it costs less than handing it to a thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from lazyfs.errors import OriginHTTPError, UsageError

T = TypeVar("T")

log = logging.getLogger(__name__)

# Kubernetes takes up to a minute or so to project a rotated secret; ten seconds more is noise.
CHECK_SECONDS = 10.0

# What tells one file at the path from another, or a rewrite of it: device, inode, size,
# modification and change times.
_Stat = tuple[int, int, int, int, int]


class TokenSource:
    """The token to send now: a fixed one (an environment variable, or none), or the one in
    ``path``, read by ``read`` (which raises ``UsageError`` with one line when it cannot)."""

    def __init__(
        self,
        token: str | None,
        path: Path | None = None,
        read: Callable[[Path], str] | None = None,
        *,
        check_every: float = CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``token``: the one read at mount (a bad file is refused there, as a usage error)."""
        self._token = token
        self._path = path
        self._read = read
        self._check_every = check_every
        self._clock = clock
        self._checked_at = clock()
        # Unknown until the first look: ``token`` was read before any stat could be taken.
        self._seen: _Stat | None = None
        self._problem: str | None = None  # the last warning, not repeated at every look

    def current(self) -> str | None:
        """The token for the request about to be sent."""
        if self._path is not None and self._clock() - self._checked_at >= self._check_every:
            self._look(forced=False)
        return self._token

    def refused(self, sent: str | None) -> bool:
        """The hub refused ``sent`` (HTTP 401): whether another token is now at hand to send
        instead. The file is read again once, unless a newer token was read since."""
        if self._path is None:
            return False
        if self._token != sent:
            return True
        self._look(forced=True)
        return self._token != sent

    def _look(self, forced: bool) -> None:
        assert self._path is not None and self._read is not None
        self._checked_at = self._clock()
        # The stat before the read: a change between the two is seen at the next look.
        seen = _stat(self._path)
        if not forced and seen is not None and seen == self._seen:
            return
        try:
            token = self._read(self._path)
        except UsageError as exc:
            if str(exc) != self._problem:
                self._problem = str(exc)
                log.warning("%s; the hub token read before is kept", exc)
            return
        self._problem = None
        self._seen = seen
        if token != self._token:
            self._token = token
            log.info("read a new hub token from --token-file %s", self._path)


def _stat(path: Path) -> _Stat | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


async def with_current_token(tokens: TokenSource, send: Callable[[], Awaitable[T]], what: str) -> T:
    """``send()`` (which sends the token as of now), and once more if the hub refused the
    token it carried (HTTP 401) and another is now at hand (a rotated ``--token-file``); a
    second refusal stands."""
    sent = tokens.current()
    try:
        return await send()
    except OriginHTTPError as exc:
        if exc.status != 401 or not tokens.refused(sent):
            raise
    log.info("%s: the hub refused the token; asking again with the new one", what)
    return await send()
