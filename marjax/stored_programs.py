"""Compiled programs serialised under marjax's own key, so that the same command run again loads
its train step or sampler without tracing, lowering or compiling it.

JAX's persistent cache (marjax.compile_cache) keys a program by its lowered text, so every run
still traces and lowers it to look it up: over a second for the digits train step, half of a
resumed start. Here the key is everything the program is made from, known before tracing:

  the program's name; the config (less `compile_cache`); marjax's source files; every installed
  package's version (jax, jaxlib, flax, the plugins, ...); the backend, its devices and this
  process's place among the processes; XLA's flags and JAX's settings; and the arguments'
  tree, shapes, dtypes and shardings (mesh and device ids included).

What the key cannot see is a function redefined inside a running Python (a notebook cell, a
test's monkeypatch). That is why only the command line (`marjax.main`) turns the store on;
programs called from Python trace as usual. A stored file is trusted code, as JAX's own cache
entries are: share the folder only between hosts and users you trust.
"""
import concurrent.futures
import functools
import hashlib
import importlib.metadata
import os
import pickle
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath
from jax.experimental import serialize_executable

from marjax.compile_cache import persistent_cache_paused
from marjax.config.loading import config_items

FOLDER_NAME = "marjax-programs"
_FORMAT = 1  # bump when the stored tuple changes
_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_store: dict[str, str] = {}  # "folder": where programs are stored, while the store is on
_counts = {"loaded": 0, "compiled": 0, "preloaded": 0}


def use_program_store(cache_folder: str | None) -> str | None:
    """Stores and loads programs in `<cache_folder>/marjax-programs` from now on; None turns the
    store off (the default). Returns the store's folder, or None."""
    if cache_folder is None:
        _store.pop("folder", None)
        return None
    _store["folder"] = os.path.join(cache_folder, FOLDER_NAME)
    return _store["folder"]


def store_report() -> str:
    """How many programs this process loaded from the store (how many of them in a thread while it
    restored its state) and how many it compiled into it."""
    loaded, preloaded, compiled = _counts["loaded"], _counts["preloaded"], _counts["compiled"]
    return f"stored programs: {loaded} loaded ({preloaded} preloaded), {compiled} compiled"


@functools.cache
def _source_digest() -> str:
    """sha256 of marjax's Python files (paths and contents)."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(_PACKAGE)):
        dirs.sort()
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, _PACKAGE).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


@functools.cache
def _package_versions() -> str:
    return ";".join(sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions()))


def _platform() -> str:
    devices = jax.devices()
    listed = [(d.id, d.platform, d.device_kind, d.process_index) for d in devices]
    environment = [os.environ.get(name, "") for name in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")]
    return repr((devices[0].client.platform_version, jax.process_index(), jax.process_count(), listed, environment))


def _jax_settings() -> str:
    """JAX's settings, less the cache's own (a folder's name does not change a program)."""
    values = jax.config.values
    return repr(sorted((name, repr(values[name])) for name in values if "cache" not in name))


def _signature(args: tuple) -> str:
    """The arguments' tree and each leaf's shape, dtype, weak type and sharding with its devices."""
    leaves, tree = jax.tree.flatten(args)
    described = []
    for leaf in leaves:
        sharding = getattr(leaf, "sharding", None)
        devices = (sharding.mesh.device_ids.tolist() if isinstance(sharding, jax.sharding.NamedSharding)
                   else sorted(d.id for d in sharding.device_set) if sharding is not None else None)
        described.append((getattr(leaf, "shape", None), str(getattr(leaf, "dtype", type(leaf).__name__)),
                          bool(getattr(leaf, "weak_type", False)), repr(sharding), devices))
    return repr((str(tree), described))


def program_key(name: str, config: ml_collections.ConfigDict, args: tuple) -> str:
    """The store's key (64 hex digits) of program `name` built from `config`, called with `args`."""
    settings = [(path, repr(value)) for path, value in config_items(config) if not path.startswith("compile_cache.")]
    digest = hashlib.sha256()
    for part in (name, repr(settings), _source_digest(), _package_versions(), _platform(), _jax_settings(),
                 _signature(args)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _load(path: epath.Path) -> jax.stages.Compiled | None:
    """The program stored at `path`, or None when there is none; a file that does not load is
    named in a warning and compiled again."""
    if not path.exists():
        return None
    try:
        version, executable, in_tree, out_tree = pickle.loads(path.read_bytes())
        if version != _FORMAT:
            raise ValueError(f"format {version}, this marjax writes {_FORMAT}")
        return serialize_executable.deserialize_and_load(executable, in_tree, out_tree)
    except Exception as e:  # a damaged or foreign file is only a cache miss
        logging.warning("the stored program %s does not load (%s: %s); compiling it again", path, type(e).__name__, e)
        return None


def _save(path: epath.Path, compiled: jax.stages.Compiled) -> None:
    """Writes `compiled` to `path` through a temporary name, so a reader never sees half a file. A
    program with a host callback (its address is baked into the code, so JAX's cache skips it too)
    or one JAX cannot serialise is not stored, with a warning."""
    unloaded = getattr(compiled._executable, "_unloaded_executable", None)
    try:
        if getattr(unloaded, "host_callbacks", None):
            raise ValueError("it calls back into Python on the host")
        executable, in_tree, out_tree = serialize_executable.serialize(compiled)
    except (ValueError, NotImplementedError, TypeError, pickle.PicklingError) as e:
        logging.warning("the program %s cannot be stored (%s): every run compiles it", path.name.split("-")[0], e)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f"{path.name}.{os.getpid()}.partial"
    partial.write_bytes(pickle.dumps((_FORMAT, executable, in_tree, out_tree)))
    partial.replace(path)


class StoredProgram:
    """`jitted` (a `jax.jit` function of positional arguments), loaded from the store at its first
    call when a run with the same key stored it, else lowered, compiled and stored there. Every
    later call runs that program, so they must have the first call's signature (a different one is
    jax.stages.Compiled's TypeError). With the store off, every call is `jitted`'s."""

    def __init__(self, name: str, jitted: Callable, config: ml_collections.ConfigDict):
        self.name, self.jitted, self.config = name, jitted, config
        self._program: jax.stages.Compiled | None = None
        self._preloading: tuple[str, concurrent.futures.Future] | None = None

    def _path(self, args: tuple) -> epath.Path:
        return epath.Path(_store["folder"]) / f"{self.name}-{program_key(self.name, self.config, args)[:40]}.pkl"

    def preload(self, *abstract_args: Any) -> None:
        """Starts loading the program for arguments like `abstract_args` (ShapeDtypeStructs with
        shardings, or arrays) in a thread, so that it overlaps other start-up work (XLA loads
        without holding the GIL); the first call uses it when its own arguments give the same key."""
        if "folder" in _store and self._program is None:
            path = self._path(abstract_args)
            pool = concurrent.futures.ThreadPoolExecutor(1)
            self._preloading = (str(path), pool.submit(_load, path))
            pool.shutdown(wait=False)

    def __call__(self, *args: Any) -> Any:
        if "folder" not in _store:
            return self.jitted(*args)
        if self._program is None:
            path = self._path(args)
            preloading, self._preloading = self._preloading, None
            preloaded = preloading is not None and preloading[0] == str(path)
            program = preloading[1].result() if preloaded else _load(path)
            if program is None:
                with persistent_cache_paused():
                    program = self.jitted.lower(*args).compile()
                _save(path, program)
                _counts["compiled"] += 1
            else:
                _counts["loaded"] += 1
                _counts["preloaded"] += preloaded
            self._program = program
        return self._program(*args)
