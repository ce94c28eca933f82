"""JAX's persistent compilation cache for every marjax program, so a rerun loads its compiled
programs instead of compiling them again.

JAX keys each entry by the program itself (its HLO, so any change of model, config value baked
into the program, batch or sharding), the devices and mesh it runs on, XLA's flags and the
jaxlib version; marjax adds a folder per jax version on top, so that one can be cleared alone.
The cache is trusted code: share a folder only between hosts and users you trust (JAX's warning).
"""
import collections
import contextlib
import os
from collections.abc import Iterator

import jax
from jax.experimental.compilation_cache import compilation_cache

from marjax.errors import ConfigError

JAX_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_REQUESTS = "/jax/compilation_cache/compile_requests_use_cache"
_HITS = "/jax/compilation_cache/cache_hits"
_events: collections.Counter = collections.Counter()
_listening: list[bool] = []  # one entry once the counter listens (JAX has no way to ask)


def _count(event: str, **_) -> None:
    if event in (_REQUESTS, _HITS):
        _events[event] += 1


def default_cache_root() -> str:
    """$JAX_COMPILATION_CACHE_DIR when set, else the user's cache directory:
    $XDG_CACHE_HOME/marjax/jax (~/.cache/marjax/jax)."""
    if os.environ.get(JAX_CACHE_VARIABLE):
        return os.environ[JAX_CACHE_VARIABLE]
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(user_cache, "marjax", "jax")


def cache_folder(root: str) -> str:
    """The folder of this jax version under `root` (a local path or a URL such as gs://...)."""
    return os.path.join(root, f"jax-{jax.__version__}")


def use_compile_cache(root: str, enabled: bool = True) -> str | None:
    """Turns JAX's persistent compilation cache on in `cache_folder(root)` ("" : `default_cache_root()`)
    for every program this process compiles from now on, or off when not `enabled`. Every program
    is stored, however fast it compiled. Returns the folder (None when off); a local folder that
    cannot be created is a ConfigError naming it. Call before the first compilation: JAX opens
    its cache once, so a later call with another folder reopens it there."""
    if not enabled:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = cache_folder(root or default_cache_root())
    if "://" not in folder:  # JAX makes remote folders itself
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"compile_cache.dir: cannot create the compilation cache folder {folder}: {e}") from e
    jax.config.update("jax_enable_compilation_cache", True)
    if jax.config.jax_compilation_cache_dir != folder:
        compilation_cache.reset_cache()
        compilation_cache.set_cache_dir(folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if not _listening:
        jax.monitoring.register_event_listener(_count)
        _listening.append(True)
    return folder


def cache_report() -> str:
    """How many programs this process loaded from the cache and how many it compiled (and stored)."""
    hits = _events[_HITS]
    return f"compilation cache: {hits} programs loaded, {_events[_REQUESTS] - hits} compiled"


@contextlib.contextmanager
def persistent_cache_paused() -> Iterator[None]:
    """Compiles inside the block neither read from nor write to JAX's persistent cache. For
    programs serialised whole (marjax.stored_programs): on the CPU backend, an executable that came
    out of JAX's cache serialises without its compiled functions, and fails when loaded and run."""
    enabled = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()  # JAX decides once whether the cache is used; ask again
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", enabled)
        compilation_cache.reset_cache()
