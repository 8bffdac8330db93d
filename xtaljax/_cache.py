"""JAX's persistent compilation cache for the command-line tools.

A refinement compiles its residual/Jacobian program once per problem shape (a few seconds on
CPU). With the cache on, a later run of the same shapes loads the compiled programs from disk.
Location: ``$XTALJAX_CACHE_DIR``, else ``~/.cache/xtaljax/jax``; ``XTALJAX_CACHE_DIR=off``
disables it.
"""

from __future__ import annotations

import os
from pathlib import Path


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Turn on the persistent cache (every compiled program, however small). Returns the
    directory, or None when disabled or not writable."""
    import jax

    path = path or os.environ.get("XTALJAX_CACHE_DIR") or Path.home() / ".cache" / "xtaljax" / "jax"
    if str(path).lower() == "off":
        return None
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)
