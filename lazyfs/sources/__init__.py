"""Where bytes come from: the HTTP origin (manifests, small bodies through httpx; block bodies
through the fast ranged-GET path), hubs (Hugging Face, ModelScope) and what every source offers
the read path (``BlockSource``). Nothing here is trusted: callers verify what it returns.
May import: lazyfs.core, lazyfs.errors.
"""
