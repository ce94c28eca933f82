"""Programs serialised whole under marjax's key (marjax.stored_programs): what the key covers, the
round trip, a damaged file, the preload. Runs of the command line that store and load the train
step and the sampler are in test_main_program.py."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import logging as absl_logging
from jax.sharding import NamedSharding, PartitionSpec

from marjax import stored_programs
from marjax.config.defaults import base_config
from marjax.stored_programs import StoredProgram, program_key, use_program_store


@pytest.fixture
def store(tmp_path):
    """The store on in `tmp_path` with fresh counts; off again afterwards."""
    folder = use_program_store(str(tmp_path))
    before = dict(stored_programs._counts)
    stored_programs._counts.update(loaded=0, compiled=0, preloaded=0)
    yield folder
    use_program_store(None)
    stored_programs._counts.update(before)


def mesh(axis: str = "data") -> jax.sharding.Mesh:
    return jax.make_mesh((1,), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def affine(x, scale):
    return jnp.tanh(x @ x.T) * scale + 1.0


def arguments(axis: str = "data", shape=(4, 3), dtype=jnp.float32):
    sharding = NamedSharding(mesh(axis), PartitionSpec(axis))
    x = jax.device_put(jnp.arange(np.prod(shape), dtype=dtype).reshape(shape) / 7, sharding)
    return x, jnp.float32(2.0)


def test_the_key_changes_with_each_thing_a_program_is_made_from(monkeypatch):
    config = base_config("mar")
    base = program_key("step", config, arguments())
    assert program_key("step", config, arguments()) == base
    changed = {
        "name": program_key("sample", config, arguments()),
        "shape": program_key("step", config, arguments(shape=(8, 3))),
        "dtype": program_key("step", config, arguments(dtype=jnp.bfloat16)),
        "mesh": program_key("step", config, arguments(axis="fsdp")),
    }
    config.train.base_lr *= 2
    changed["config"] = program_key("step", config, arguments())
    config.train.base_lr /= 2
    config.compile_cache.dir = "/elsewhere"  # where the store lives is not part of what it stores
    assert program_key("step", config, arguments()) == base
    for part, value in (("_source_digest", "edited"), ("_package_versions", "jax==9.9.9"),
                        ("_platform", "('gpu', 0, 1, [])"), ("_jax_settings", "x64")):
        monkeypatch.setattr(stored_programs, part, lambda value=value: value)
        changed[part] = program_key("step", config, arguments())
        monkeypatch.undo()
    assert program_key("step", config, arguments()) == base
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_the_key_sees_the_source_and_installed_packages_and_devices():
    assert len(stored_programs._source_digest()) == 64
    assert f"jax=={jax.__version__}" in stored_programs._package_versions()
    platform = stored_programs._platform()
    assert jax.devices()[0].device_kind in platform and jax.devices()[0].client.platform_version in platform


def test_abstract_arguments_give_the_key_of_the_arrays_they_describe():
    config = base_config("mar")
    x, scale = arguments()
    key = jax.random.fold_in(jax.random.key(0), 3)  # key arrays have no weak_type; their descriptions do
    abstract = (jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), scale,
                jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=key.sharding))
    assert program_key("step", config, abstract) == program_key("step", config, (x, scale, key))


def test_a_stored_program_loads_in_a_new_object_and_gives_the_same_numbers(store):
    config = base_config("mar")
    expected = jax.jit(affine)(*arguments())
    first = StoredProgram("affine", jax.jit(affine), config)
    np.testing.assert_array_equal(first(*arguments()), expected)
    assert len(glob.glob(os.path.join(store, "affine-*.pkl"))) == 1
    second = StoredProgram("affine", jax.jit(affine), config)
    np.testing.assert_array_equal(second(*arguments()), expected)
    np.testing.assert_array_equal(second(*arguments()), expected)
    assert stored_programs._counts == {"loaded": 1, "compiled": 1, "preloaded": 0}
    assert stored_programs.store_report() == "stored programs: 1 loaded (0 preloaded), 1 compiled"


def test_a_preloaded_program_is_used_when_the_call_has_its_key(store):
    config = base_config("mar")
    StoredProgram("affine", jax.jit(affine), config)(*arguments())
    x, scale = arguments()
    program = StoredProgram("affine", jax.jit(affine), config)
    program.preload(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), scale)
    np.testing.assert_array_equal(program(x, scale), jax.jit(affine)(x, scale))
    assert stored_programs._counts == {"loaded": 1, "compiled": 1, "preloaded": 1}


def test_a_damaged_file_is_named_and_compiled_again(store, monkeypatch):
    config = base_config("mar")
    StoredProgram("affine", jax.jit(affine), config)(*arguments())
    (path,) = glob.glob(os.path.join(store, "affine-*.pkl"))
    with open(path, "r+b") as f:
        f.truncate(100)
    warnings = []
    monkeypatch.setattr(absl_logging, "warning", lambda message, *args: warnings.append(message % args))
    np.testing.assert_array_equal(StoredProgram("affine", jax.jit(affine), config)(*arguments()),
                                  jax.jit(affine)(*arguments()))
    assert len(warnings) == 1 and path in warnings[0] and "compiling it again" in warnings[0]
    assert stored_programs._counts["compiled"] == 2 and os.path.getsize(path) > 100


def test_with_the_store_off_nothing_is_written_and_jit_runs(tmp_path):
    use_program_store(None)
    program = StoredProgram("affine", jax.jit(affine), base_config("mar"))
    program.preload(*arguments())
    np.testing.assert_array_equal(program(*arguments()), jax.jit(affine)(*arguments()))
    assert not os.listdir(tmp_path)


def test_a_program_with_a_host_callback_is_not_stored(store, monkeypatch):
    """Its callback's address is baked into the code: loaded in another process, it would jump to nothing."""
    def on_host(x):
        return jax.pure_callback(lambda v: np.asarray(v) * 2, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    warnings = []
    monkeypatch.setattr(absl_logging, "warning", lambda message, *args: warnings.append(message % args))
    x, _ = arguments()
    np.testing.assert_array_equal(StoredProgram("on_host", jax.jit(on_host), base_config("mar"))(x), x * 2)
    assert not glob.glob(os.path.join(store, "*"))
    assert len(warnings) == 1 and "on_host cannot be stored" in warnings[0] and "calls back" in warnings[0]
