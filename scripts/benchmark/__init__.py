"""The benchmark behind scripts/bench: lazyfs against curl, download-then-read, rclone mount,
the local disk and a minimal pyfuse3 passthrough, and models loaded from lazyfs against
downloading them first, on one machine, with nginx on 127.0.0.1 as the origin for everyone.

- ``subjects``: what is read from (a lazyfs mount with or without --tensor-aware, an rclone
  mount, curl, a download of a file or of a whole repository, the local disk, the passthrough
  of ``passthrough``), each a context manager that gives a path or a URL and stops what it
  started;
- ``workloads`` (on ``workload``, the base): how it is read (sequential cold/hot/warm, time to
  first tensor, first MiB, random preads, hashing, many readers, startup), each declaring the
  metrics it records, their units and table rows;
- ``modelworkloads``: issue 12's, models loaded as their users load them (transformers,
  safetensors, a GGUF reader, sentence-transformers), each load in a process of its own
  (``modelload``, driven by ``modeljob``), of models written once with random weights
  (``models``, ``modelmake``); torch and the rest come from the ``bench`` extra, which
  scripts/bench installs and the tests never need;
- ``xet``: issue 13's, a safetensors file stored in Xet (uploaded by the real hf_xet client to
  the tests' fake Xet CAS, served with the fake Hub in this process) read through three mounts
  of one repository: Xet mode, whole-file mode (--no-xet) and a committed block manifest;
- ``fleet``: issue 14's, 1, 3 and 8 mounts reading one file at once through the shipped nginx
  cache tier (scripts/cluster/) in front of an origin nginx, what the origin sent, and a cold
  read through the tier against one direct from the origin;
- ``goals``: issues 11 to 14's goals, each a metric, a reference and a threshold;
- ``harness``: runs every workload (or one section's, --only) on each of its subjects --runs
  times, into ``Results``;
- ``render``: results (JSON) to the tables and to docs/performance.md.

Measuring and publishing are separate: a run saves its results as JSON keyed by commit, and the
doc is rendered from JSON only when that commit's tree was clean (``scripts/bench --render``).
"""
