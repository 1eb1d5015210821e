"""The ``lazyfs`` and ``mount.lazyfs`` commands. User errors become one line and an exit code.
Client commands (status, wait, prefetch) import only light modules, so they start fast and never
load FUSE, the store or HTTP (an import-linter contract keeps it so).
"""
