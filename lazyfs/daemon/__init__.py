"""One live mount: the FUSE operations (the only place errors become errnos), the mount's
lifecycle, its control socket, metrics, mount-point checks and the runtime paths that client
commands use to find it. May import everything below it; never lazyfs.publish or lazyfs.cli.
"""
