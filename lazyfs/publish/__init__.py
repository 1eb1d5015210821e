"""Making a repository mountable: building and verifying manifests (also for hub repositories),
the embedded HTTP server and the sample repository. May import lazyfs.read and below; never
lazyfs.daemon or lazyfs.cli.
"""
