"""The exception tree of lazyfs. Every module below ``fs.py`` raises only these.

    LazyfsError                      base; ``str(exc)`` is one line fit for a user
    ├── UsageError                   bad command-line input (a size, a path, a URL)
    ├── ManifestError                a manifest that does not parse or validate
    │   └── SignatureError           a required signature missing, not verifying, or not
    │                                covering the manifest (--signature-key and friends)
    ├── SourceError                  the origin could not give us the bytes
    │   ├── OriginUnreachable        connect failure, timeout, reset: nothing usable came back
    │   ├── OriginOffline            not asked at all: offline by the user's choice (HF_HUB_OFFLINE)
    │   ├── OriginHTTPError          an HTTP status we cannot use (404, 403, 5xx after retries)
    │   ├── OriginCertificateError   a TLS certificate that fails verification (never retried)
    │   └── OriginProtocolError      a response that breaks the protocol (wrong length, bad range)
    ├── IntegrityError               bytes that do not match their digest
    │   └── BlockIntegrityError      one block, after its refetch, still does not match
    ├── CacheError                   the local block store failed (disk full, corrupt database)
    └── MountError                   the mount cannot be set up (mount point, /dev/fuse, pin)

``fs.py`` is the only place that turns these into ``FUSEError(errno)``; ``cli.py`` turns them
into one line on stderr and an exit code (``exit_code``).
"""

from __future__ import annotations


class LazyfsError(Exception):
    """Base of every error lazyfs raises on purpose."""

    exit_code = 1


class UsageError(LazyfsError):
    exit_code = 2


class ManifestError(LazyfsError):
    exit_code = 4


class SignatureError(ManifestError):
    """The manifest cannot be trusted as the signed one: the mount is refused."""


class SourceError(LazyfsError):
    exit_code = 3


class OriginUnreachable(SourceError):
    pass


class OriginOffline(SourceError):
    """The source is not to be asked (``HF_HUB_OFFLINE``): never retried."""


class OriginHTTPError(SourceError):
    def __init__(self, message: str, status: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class OriginProtocolError(SourceError):
    pass


class OriginCertificateError(SourceError):
    """Asking again cannot help: the CAs to trust are configuration (--ca-file)."""


class IntegrityError(LazyfsError):
    exit_code = 5


class BlockIntegrityError(IntegrityError):
    def __init__(
        self, path: str, index: int, url: str, expected: str, actual: str, attempts: int
    ) -> None:
        super().__init__(
            f"block {index} of {path} failed verification after {attempts} fetches from {url}: "
            f"expected sha256 {expected}, got {actual}"
        )
        self.path = path
        self.index = index
        self.url = url
        self.expected = expected
        self.actual = actual


class CacheError(LazyfsError):
    exit_code = 6


class MountError(LazyfsError):
    exit_code = 7
