"""The pure core: manifests, block arithmetic, the mount's namespace, read patterns, sizes,
hub protocol parsing, source rotation, the attempt policy of a block fetch and file selection.
No I/O: no files, sockets, threads or event loop (an import-linter contract keeps it so);
everything here is tested with hypothesis.
May import: lazyfs.errors.
"""
