"""The block pipeline: a read becomes verified blocks from memory, the disk store or a source.
Named parts: the reader (composes the rest, read-ahead), the block cache (memory, disk,
background writes), the fetcher (sources, the attempt policy, one deadline per block),
single-flight loading, files verified whole, and prefetch.
May import: lazyfs.sources, lazyfs.cache, lazyfs.core, lazyfs.errors.
"""
