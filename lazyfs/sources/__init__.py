"""Where bytes come from: the HTTP origin (manifests, small bodies through httpx; block bodies
through the fast ranged-GET path), hubs (Hugging Face, ModelScope) and what every source offers
the read path (``BlockSource``). Nothing here is trusted: callers verify what it returns.
May import: lazyfs.core, lazyfs.errors.
"""

import sys

# httpx imports its command-line client, and with it rich and pygments, whenever they are
# installed (rich is, for prefetch's progress bars): two thirds of httpx's import time, paid
# by every mount before it is live, for a client lazyfs never runs. A None entry makes that
# one import fail, and httpx then defines its placeholder instead. Every module of lazyfs
# that uses httpx is in this package, so this runs before httpx is first imported.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
