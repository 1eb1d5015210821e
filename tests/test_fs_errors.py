"""The FUSE boundary: every failure below it becomes an errno for that request alone."""

from __future__ import annotations

import errno

import pytest
from pyfuse3 import FUSEError

from lazyfs.errors import BlockIntegrityError, OriginUnreachable
from lazyfs.fs import errors_as_errno

pytestmark = pytest.mark.pure


@pytest.mark.parametrize(
    "error",
    [
        OriginUnreachable("http://origin/x: timed out"),
        BlockIntegrityError("x", 3, "http://origin/x", "a" * 64, "b" * 64, 2),
        ValueError("a bug below the FUSE boundary"),
        KeyError("another"),
    ],
)
def test_errors_become_eio_and_are_logged(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(FUSEError) as raised, errors_as_errno("read of x at 0+10"):
        raise error
    assert raised.value.errno == errno.EIO
    assert "read of x at 0+10 failed" in caplog.text


def test_fuse_errors_pass_through() -> None:
    with pytest.raises(FUSEError) as raised, errors_as_errno("lookup"):
        raise FUSEError(errno.ENOENT)
    assert raised.value.errno == errno.ENOENT
