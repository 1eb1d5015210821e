"""Helpers shared by the tests and scripts/benchmark: real origins, real mounts, their processes.

No pytest in here (the benchmark imports it too); the fixtures built on it live in tests/.
"""
