"""Where the persistent compilation cache lives (marjax.compile_cache). The runs that fill and reuse
it are in test_main_program.py; nothing here changes this process's JAX settings."""
import os

import jax
import pytest

from marjax.compile_cache import JAX_CACHE_VARIABLE, cache_folder, default_cache_root, use_compile_cache
from marjax.config.defaults import base_config
from marjax.errors import ConfigError


def test_the_folder_is_per_jax_version_so_another_version_never_reads_it(monkeypatch):
    assert cache_folder("/cache") == f"/cache/jax-{jax.__version__}"
    monkeypatch.setattr(jax, "__version__", "9.9.9")
    assert cache_folder("/cache") == "/cache/jax-9.9.9"
    assert cache_folder("gs://bucket/jax") == "gs://bucket/jax/jax-9.9.9"


def test_the_default_is_jax_own_variable_else_the_user_cache_directory(monkeypatch):
    monkeypatch.setenv(JAX_CACHE_VARIABLE, "/shared/jax")
    assert default_cache_root() == "/shared/jax"
    monkeypatch.delenv(JAX_CACHE_VARIABLE)
    monkeypatch.setenv("XDG_CACHE_HOME", "/home/me/.cache")
    assert default_cache_root() == "/home/me/.cache/marjax/jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_root() == os.path.expanduser("~/.cache/marjax/jax")


def test_a_folder_that_cannot_be_made_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=f"compile_cache.dir.*{blocker}/jax-"):
        use_compile_cache(str(blocker))


def test_the_cache_is_on_by_default_for_every_family():
    for task in ("mar", "ar", "gpt", "var", "tokenizer"):
        config = base_config(task)
        assert config.compile_cache.enabled and config.compile_cache.dir == ""
