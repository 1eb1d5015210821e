"""/etc/fuse.conf read as fusermount3 reads it: whether users may mount with allow_other."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lazyfs.core.fuseconf import user_allow_other_set

# The file Debian's fuse3 package installs, trimmed: the setting is there, commented out.
DEBIAN_DEFAULT = b"""\
# The file /etc/fuse.conf allows for the following parameters:
#
# user_allow_other - Using the allow_other mount option works fine as root, in
# order to have it work as user you need user_allow_other in /etc/fuse.conf as
# well.

#user_allow_other


# mount_max = n - this option sets the maximum number of mounts.
#mount_max = 1000
"""

# Lines that are not the setting, whatever else they say.
other_lines = st.one_of(
    st.just(b""),
    st.just(b"mount_max = 1000"),
    st.binary(max_size=80).map(lambda raw: b"#" + raw.replace(b"\n", b" ")),
    st.sampled_from([b"user_allow_others", b"user_allow_other = 1", b"allow_other"]),
)


@pytest.mark.parametrize(
    "conf",
    [
        b"user_allow_other\n",
        b"  user_allow_other\t\r\n",
        b"user_allow_other # users may share their mounts\n",
        b"mount_max = 1000\nuser_allow_other\n#mount_max = 10\n",
        DEBIAN_DEFAULT + b"user_allow_other\n",
    ],
)
def test_an_uncommented_line_lets_users_allow_others(conf: bytes) -> None:
    assert user_allow_other_set(conf)


@pytest.mark.parametrize(
    "conf",
    [
        b"",
        DEBIAN_DEFAULT,
        b"# user_allow_other\n",
        b"mount_max = 1000 # user_allow_other\n",
        b"user_allow_others\n",
        b"user_allow_other = 1\n",
        b"user_allow_other yes\n",
        b"USER_ALLOW_OTHER\n",
        # fusermount3 skips a last line without a newline, and a line too long for its buffer.
        b"user_allow_other",
        DEBIAN_DEFAULT + b"user_allow_other",
        b"user_allow_other" + b" " * 239 + b"\n",
    ],
)
def test_anything_else_does_not(conf: bytes) -> None:
    assert not user_allow_other_set(conf)


def test_the_longest_line_fusermount_reads_still_counts() -> None:
    assert user_allow_other_set(b"user_allow_other" + b" " * 238 + b"\n")


@given(st.lists(other_lines, max_size=8), st.lists(other_lines, max_size=8))
def test_one_setting_line_among_others_decides(before: list[bytes], after: list[bytes]) -> None:
    without = b"".join(line + b"\n" for line in before + after)
    assert not user_allow_other_set(without)
    with_setting = b"".join(line + b"\n" for line in [*before, b"user_allow_other", *after])
    assert user_allow_other_set(with_setting)
