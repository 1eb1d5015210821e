"""The local cache directory: the verified block store (diskcache), cached manifests, block lists
of files verified whole, and atomic writes. Private to the mounting user; defended against
corruption, so readers re-check what comes out of it.
May import: lazyfs.core, lazyfs.errors.
"""
