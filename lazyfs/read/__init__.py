"""The block pipeline: a read becomes verified blocks from memory, the disk store or a source;
read-ahead, single-flight loading, background writes, files verified whole, and prefetch.
May import: lazyfs.sources, lazyfs.cache, lazyfs.core, lazyfs.errors.
"""
