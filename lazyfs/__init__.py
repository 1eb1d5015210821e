"""lazyfs: mount a remote model repository read-only; fetch and verify blocks on demand."""

__version__ = "0.1.0"
