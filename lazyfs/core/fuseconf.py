"""What /etc/fuse.conf says about ``allow_other`` for users, read as fusermount3 reads it.

fusermount3 lets a user other than root mount with ``allow_other`` only if fuse.conf has a
line ``user_allow_other``. It reads the file line by line with a 256-byte buffer: a line
counts only if it ends with a newline and fits the buffer; ``#`` starts a comment; blanks
around the word are ignored; the word must match exactly. Reading it the same way means
``lazyfs mount --allow-other`` refuses exactly what fusermount3 would refuse, before
anything starts, with a line the user sees instead of one in the daemon's log.
"""

from __future__ import annotations

# fgets with a 256-byte buffer: 255 bytes of a line, its newline included.
_LINE_LIMIT = 255


def user_allow_other_set(conf: bytes) -> bool:
    """Whether fuse.conf's text ``conf`` lets users mount with ``allow_other``."""
    lines = conf.split(b"\n")
    # What follows the last newline has none: fusermount3 skips it ("missing newline").
    for line in lines[:-1]:
        if len(line) + 1 > _LINE_LIMIT:
            continue
        setting = line.partition(b"#")[0].strip(b" \t\n\v\f\r")
        if setting == b"user_allow_other":
            return True
    return False
