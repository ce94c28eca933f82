"""Converters of LlamaGen's GPT and VQ and VAR's transformer and VQVAE (`python -m marjax.convert
--kind=gpt|vq|var|msvq`), both directions.

Round trips on tiny random weights (every leaf perturbed): params -> a reference-layout .pth ->
convert -> the same params, and -> `--to=torch` -> the same state dict. The generators run the
command line itself on a tiny size registered as a preset for the test. Preset inference runs on
state dicts of published sizes made of broadcast zeros (nothing large is allocated).
"""
import dataclasses

import jax
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from marjax import convert
from marjax.config.defaults import base_config
from marjax.errors import ConversionError
from marjax.models import gpt as gpt_model
from marjax.models import gpt_torch_layout, var_torch_layout
from marjax.models import var as var_model
from marjax.tasks import registry
from marjax.tasks import var as var_task
from marjax.tasks.tokenizer_from_config import abstract_tokenizer_params, autoencoder_from_config, load_converted_params
from marjax.tokenizers import llamagen_vq_torch_layout, msvq_torch_layout
from marjax.tokenizers.llamagen_vq import PRESETS as VQ_PRESETS
from marjax.tokenizers.llamagen_vq import llamagen_vq
from marjax.tokenizers.msvq_vae import VQVAE

torch = pytest.importorskip("torch")

# Small enough for a CPU test, with every structural feature of the published sizes.
TINY_GPT = dict(width=64, depth=2, num_heads=2)  # head dim 32; LlamaGen's multiple_of 256 -> hidden 256
TINY_VAR = dict(depth=2, width=64, num_heads=2, drop_path_rate=0.0, patch_nums=(1, 2, 3))
TINY_VQ = dict(ch=32, num_res_blocks=1, z_channels=32, codebook_size=64, code_dim=4)
TINY_MSVQ = VQVAE(ch=32, ch_mult=(1, 2), num_res_blocks=1, code_dim=4, codebook_size=32, patch_nums=(1, 2, 4))


def perturbed(shapes, seed=0):
    """Random values of the given shapes (no zero-initialised leaf hides a transposition)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)


zeros_like_shapes = convert.zeros_of_shapes  # broadcast zeros: a full-size state dict that allocates nothing


def save_pth(path, content):
    convert.save_torch(content, path)
    return str(path)


def load_pth(path):
    return jax.tree.map(lambda t: t.numpy(), torch.load(path, weights_only=True))


def assert_same_tree(a, b):
    flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b):
        assert np.shape(x) == np.shape(y), path
        np.testing.assert_array_equal(x, y, err_msg=str(path))


def run_convert(**flag_values):
    """`python -m marjax.convert` in this process with these flags; ConversionError for its error exit."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(**flag_values):
        try:
            convert.main([])
        except SystemExit as e:
            raise ConversionError(str(e)) from e


@pytest.fixture
def tiny_presets(monkeypatch):
    """A tiny GPT ("gpt_tiny") and VAR ("d2") among the presets, and VAR in the registry if it is not yet."""
    monkeypatch.setitem(gpt_model.PRESETS, "gpt_tiny", TINY_GPT)
    monkeypatch.setitem(var_model.PRESETS, "d2", TINY_VAR)
    monkeypatch.setitem(registry.TASKS, "var", var_task.SPEC)


def restored(kind, workdir):
    config, state = convert.read_workdir(kind, workdir)
    return config, state.params, state.ema_params


# ---- generators --------------------------------------------------------------------------------------

def test_gpt_file_to_workdir_and_back(tmp_path, tiny_presets, capsys):
    model = gpt_model.GPT(vocab_size=48, num_classes=10, **TINY_GPT)  # a file of 48 codes and 10 classes
    shapes = jax.eval_shape(lambda: gpt_model.init_params(model, jax.random.key(0)))
    params, ema = perturbed(shapes, 1), perturbed(shapes, 2)
    state, ema_state = gpt_torch_layout.torch_state_from_params(params), gpt_torch_layout.torch_state_from_params(ema)
    assert not any("freqs_cis" in k for k in state)
    path = save_pth(tmp_path / "c2i.pt", {"model": state, "ema": ema_state, "steps": np.int64(7)})

    workdir = str(tmp_path / "gpt")
    run_convert(kind="gpt", input=path, output=workdir, image_size=64)
    printed = capsys.readouterr().out
    assert "--config=configs/llamagen_gpt.py:gpt_tiny" in printed and "--config.data.image_size=64" in printed
    assert "--config.tokenizer.codebook_size=48" in printed and "--config.data.num_classes=10" in printed
    config, got, got_ema = restored("gpt", workdir)
    assert (config.data.image_size, config.data.num_classes, config.tokenizer.codebook_size) == (64, 10, 48)
    assert config.model.num_heads == 2 and config.model.multiple_of == 256
    assert_same_tree(got, params)
    assert_same_tree(got_ema, ema)

    out = str(tmp_path / "back.pt")
    run_convert(kind="gpt", to="torch", input=workdir, output=out)
    back = load_pth(out)
    assert sorted(back) == ["ema", "model"]
    assert_same_tree(back["model"], state)
    assert_same_tree(back["ema"], ema_state)
    run_convert(kind="gpt", to="torch", input=workdir, output=out, weights="ema")  # what LlamaGen's samplers read
    assert_same_tree(load_pth(out), {"model": ema_state})

    # One copy (a bare dict, as --from-fsdp files are) is both params and EMA; the way back writes it once.
    bare_dir = str(tmp_path / "bare")
    run_convert(kind="gpt", input=save_pth(tmp_path / "bare.pt", state), output=bare_dir, image_size=64)
    _, got, got_ema = restored("gpt", bare_dir)
    assert_same_tree(got, params)
    assert_same_tree(got_ema, params)
    run_convert(kind="gpt", to="torch", input=bare_dir, output=out)
    assert_same_tree(load_pth(out), {"model": state})
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        run_convert(kind="gpt", input=path, output=workdir, image_size=64)
    with pytest.raises(ConversionError, match="task='gpt' run, not 'var'"):
        run_convert(kind="var", to="torch", input=workdir, output=out)


def test_var_file_to_workdir_and_back(tmp_path, tiny_presets, capsys):
    model = var_model.VAR(vocab_size=40, num_classes=10, **TINY_VAR)
    params = perturbed(jax.eval_shape(lambda: var_model.init_params(model, jax.random.key(0))), 3)
    state = var_torch_layout.torch_state_from_params(params, model)
    assert state["lvl_1L"].dtype == np.int64 and np.isneginf(state["attn_bias_for_masking"]).any()
    path = save_pth(tmp_path / "var_d2.pth", state)

    workdir = str(tmp_path / "var")
    run_convert(kind="var", input=path, output=workdir)
    printed = capsys.readouterr().out
    assert "--config=configs/var_imagenet.py:d2" in printed and "--config.tokenizer.codebook_size=40" in printed
    config, got, got_ema = restored("var", workdir)
    assert (config.data.num_classes, config.tokenizer.codebook_size) == (10, 40)
    assert tuple(config.tokenizer.patch_nums) == (1, 2, 3)
    assert_same_tree(got, params)
    assert_same_tree(got_ema, params)

    out = str(tmp_path / "back.pth")
    run_convert(kind="var", to="torch", input=workdir, output=out)
    back = torch.load(out, weights_only=True)
    assert back["lvl_1L"].dtype == torch.int64  # the reference's buffer, loaded strictly
    assert_same_tree(jax.tree.map(lambda t: t.numpy(), back), state)

    # A run whose EMA differs (say, fine-tuned with one) has two copies; VAR's file holds one.
    ema_state = var_torch_layout.torch_state_from_params(perturbed(params, 4), model)
    trained = str(tmp_path / "trained")
    convert.write_workdir(state, ema_state, config, trained)
    with pytest.raises(ConversionError, match="VAR's file holds one copy: choose --weights=ema or --weights=model"):
        run_convert(kind="var", to="torch", input=trained, output=out)
    run_convert(kind="var", to="torch", input=trained, output=out, weights="ema")
    assert_same_tree(load_pth(out), ema_state)


def test_gpt_and_var_errors_name_the_keys(tmp_path, tiny_presets):
    model = gpt_model.GPT(vocab_size=48, num_classes=10, **TINY_GPT)
    state = gpt_torch_layout.torch_state_from_params(
        perturbed(jax.eval_shape(lambda: gpt_model.init_params(model, jax.random.key(0)))))
    config = convert.llamagen_gpt_config(convert.infer_gpt(state), 64)
    missing = {k: v for k, v in state.items() if k != "layers.1.ffn_norm.weight"}
    with pytest.raises(ConversionError, match=r"keys missing from the file: \['layers.1.ffn_norm.weight'\]"):
        convert.write_workdir(missing, missing, config, str(tmp_path / "a"))
    extra = {**state, "freqs_cis": np.zeros((17, 16, 2), np.float32)}
    with pytest.raises(ConversionError, match=r"unexpected \['freqs_cis'\]"):
        convert.write_workdir(extra, extra, config, str(tmp_path / "b"))
    var = var_model.VAR(vocab_size=40, num_classes=10, **TINY_VAR)
    var_state = var_torch_layout.torch_state_from_params(
        zeros_like_shapes(jax.eval_shape(lambda: var_model.init_params(var, jax.random.key(0)))), var)
    var_state["blocks.0.attn.zero_k_bias"] = np.ones(64, np.float32)
    var_state["blocks.0.attn.extra"] = np.ones(1, np.float32)
    with pytest.raises(ConversionError, match=r"unexpected \['blocks.0.attn.extra'\].*\['blocks.0.attn.zero_k_bias'\]"):
        convert.write_workdir(var_state, var_state, convert.var_config(convert.infer_var(var_state)),
                              str(tmp_path / "c"))


def test_gpt_state_dict_is_found_where_llamagen_looks():
    a, b = {"tok_embeddings.weight": np.zeros((4, 2))}, {"tok_embeddings.weight": np.ones((4, 2))}
    for key in convert.GPT_STATE_KEYS:
        assert convert.gpt_state_dicts({key: a, "args": None}, "both") == (a, a)
    assert convert.gpt_state_dicts(a, "both") == (a, a)
    assert convert.gpt_state_dicts({"model": a, "ema": b}, "both") == (a, b)
    assert convert.gpt_state_dicts({"model": a, "ema": b}, "ema") == (b, b)
    assert convert.gpt_state_dicts({"model": a, "ema": b}, "model") == (a, a)
    with pytest.raises(ConversionError, match="--weights=ema: the file has no 'ema'"):
        convert.gpt_state_dicts({"model": a}, "ema")
    with pytest.raises(ConversionError, match=r"found keys \['optimizer', 'steps'\]"):
        convert.gpt_state_dicts({"optimizer": {}, "steps": 3}, "both")


# ---- preset inference on published shapes -------------------------------------------------------------

def test_gpt_presets_differ_in_width_or_depth():  # so the file's shapes name the heads
    sizes = [(p["width"], p["depth"]) for p in gpt_model.PRESETS.values()]
    assert len(set(sizes)) == len(sizes)


@pytest.mark.parametrize("preset", ["gpt_b", "gpt_3b"])
def test_gpt_preset_is_inferred_from_shapes(preset):
    shapes = jax.eval_shape(lambda: gpt_model.init_params(gpt_model.gpt_preset(preset), jax.random.key(0)))
    state = gpt_torch_layout.torch_state_from_params(zeros_like_shapes(shapes))
    sizes = convert.infer_gpt(state)
    assert sizes == dict(preset=preset, width=gpt_model.PRESETS[preset]["width"],
                         depth=gpt_model.PRESETS[preset]["depth"], vocab_size=16384, num_classes=1000)
    config = convert.llamagen_gpt_config(sizes, 384)
    assert config.model.num_heads == gpt_model.PRESETS[preset]["num_heads"] and config.data.image_size == 384


def test_gpt_of_no_preset_size_asks_for_the_preset():
    state = {"tok_embeddings.weight": np.broadcast_to(np.float32(0), (16384, 896)),
             "cls_embedding.embedding_table.weight": np.broadcast_to(np.float32(0), (1001, 896)),
             **{f"layers.{i}.attention_norm.weight": np.zeros(896, np.float32) for i in range(12)}}
    with pytest.raises(ConversionError, match=r"no GPT preset has width 896 and depth 12.*give --preset="):
        convert.infer_gpt(state)
    sizes = convert.infer_gpt(state, "gpt_l")  # gpt_l's 16 heads at the file's sizes
    config = convert.llamagen_gpt_config(sizes, 256)
    assert (config.model.width, config.model.depth, config.model.num_heads) == (896, 12, 16)
    with pytest.raises(ConversionError, match="divisible by 4"):
        convert.llamagen_gpt_config(convert.infer_gpt(state, "gpt_xl"), 256)  # 896 / 20 heads
    with pytest.raises(ConversionError, match="multiple of the VQ tokenizer's stride 16"):
        convert.llamagen_gpt_config(sizes, 200)
    with pytest.raises(ConversionError, match="not a LlamaGen GPT state dict: key 'tok_embeddings.weight'"):
        convert.infer_gpt({"norm.weight": np.zeros(4)})


@pytest.mark.parametrize("preset", ["d16", "d36-s"])
def test_var_preset_is_inferred_from_shapes(preset):
    model = var_model.var_preset(preset)
    state = var_torch_layout.torch_state_from_params(
        zeros_like_shapes(jax.eval_shape(lambda: var_model.init_params(model, jax.random.key(0)))), model)
    assert convert.infer_var(state) == dict(preset=preset, vocab_size=4096, num_classes=1000)
    config = convert.var_config(convert.infer_var(state))
    assert var_task.model_from_config(config).patch_nums == model.patch_nums


def test_var_of_no_preset_depth_asks_for_the_preset():
    state = {"class_emb.weight": np.zeros((1001, 4)), "head.weight": np.zeros((4096, 4)),
             **{f"blocks.{i}.ada_lin.1.weight": np.zeros(1) for i in range(12)}}
    with pytest.raises(ConversionError, match="no VAR preset has depth 12.*give --preset"):
        convert.infer_var(state)
    state["shared_ada_lin.1.weight"] = np.zeros(1)
    with pytest.raises(ConversionError, match="depth 12 with shared AdaLN"):
        convert.infer_var(state)
    with pytest.raises(ConversionError, match="not a VAR state dict.*'class_emb.weight'"):
        convert.infer_var({"model": {}})


@pytest.mark.parametrize("preset", sorted(VQ_PRESETS))
def test_vq_preset_is_inferred_from_levels(preset):
    model = llamagen_vq(preset)
    state = llamagen_vq_torch_layout.torch_state_from_params(zeros_like_shapes(abstract_tokenizer_params(model)))
    assert convert.vq_model_for_state(state) == model
    with pytest.raises(ConversionError, match="levels is none of the published ones"):
        convert.infer_vq_preset(3)


def test_presets_are_checked_per_kind():
    convert.check_preset("gpt", "gpt_xl")
    convert.check_preset("var", "d36-s")
    with pytest.raises(ConversionError, match=r"not a --kind=var size; choose one of \['d16'"):
        convert.check_preset("var", "gpt_b")
    with pytest.raises(ConversionError, match="--preset is not used with --kind=msvq"):
        convert.check_preset("msvq", "d16")


# ---- tokenizers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", sorted(VQ_PRESETS))
def test_vq_config_fields_build_llamagens_vq(preset):
    """The `config.tokenizer` lines the converter prints build the same module as `llamagen_vq`:
    same params (names and shapes, published sizes included) and same outputs."""
    def from_config(model):
        config = base_config("gpt")
        config.tokenizer.update(convert.vq_tokenizer_fields(model))
        return autoencoder_from_config(config)

    full = llamagen_vq(preset)
    assert jax.tree.map(lambda s: s.shape, abstract_tokenizer_params(from_config(full))) == \
        jax.tree.map(lambda s: s.shape, abstract_tokenizer_params(full))
    tiny = llamagen_vq(preset, **TINY_VQ)
    built = from_config(tiny)
    # The fields differ only in how the encoder's attention is placed (a nominal image size and the
    # resolutions to attend at); the rest, the decoder's included, is the same.
    same = [f.name for f in dataclasses.fields(tiny) if f.name not in ("resolution", "attn_resolutions", "parent")]
    assert [getattr(built, name) for name in same] == [getattr(tiny, name) for name in same]
    params = perturbed(abstract_tokenizer_params(tiny), 4)
    images = np.random.default_rng(5).uniform(-1, 1, (1, tiny.stride, tiny.stride, 3)).astype(np.float32)
    expected = tiny.apply({"params": params}, images, method=lambda m, x: m.encoder(x))
    np.testing.assert_array_equal(built.apply({"params": params}, images, method=lambda m, x: m.encoder(x)),
                                  expected)
    if preset == "vq16":  # the VQ-GPT recipe's tokenizer section is VQ-16's
        recipe = convert.gpt_recipe("gpt_b").tokenizer
        assert {k: recipe[k] for k in convert.vq_tokenizer_fields(full)} == convert.vq_tokenizer_fields(full)


def test_vq_file_to_params_and_back(tmp_path, capsys):
    model = llamagen_vq("vq8", **TINY_VQ)
    params = perturbed(abstract_tokenizer_params(model), 6)
    state = llamagen_vq_torch_layout.torch_state_from_params(params)
    path = save_pth(tmp_path / "vq_ds8_c2i.pt", {"model": state, "optimizer": {}})
    directory = str(tmp_path / "vq8")
    assert convert.convert_vq(convert.load_torch_file(path), directory, model=model) == model
    assert_same_tree(load_converted_params(model, directory), params)
    # The directory names its levels and codebook: --to=torch finds the preset.
    found = convert.vq_model_of_directory(directory)
    assert (tuple(found.ch_mult), found.codebook_size, found.code_dim) == ((1, 2, 2, 4), 64, 4)
    assert_same_tree(convert.tokenizer_torch_content("vq", directory, model=model), {"model": state})
    usage = convert.vq_usage(model, directory)
    for line in ("--config.tokenizer.kind='vq'", "ch_mult='(1,2,2,4)'", "attn_resolutions='(32,)'",
                 "resolution=256", "decoder_attn_levels='(3,)'", "codebook_size=64"):
        assert line in usage
    missing = {k: v for k, v in state.items() if k != "decoder.conv_blocks.0.attn.1.q.weight"}
    with pytest.raises(ConversionError, match=r"missing from the file: \['decoder.conv_blocks.0.attn.1.q.weight'\]"):
        convert.convert_vq({"model": missing}, str(tmp_path / "a"), model=model)
    with pytest.raises(ConversionError, match=r"unexpected \['quantize.extra'\]"):
        convert.convert_vq({"model": {**state, "quantize.extra": np.zeros(1)}}, str(tmp_path / "b"), model=model)
    with pytest.raises(ConversionError, match="already exists"):
        convert.convert_vq({"model": state}, directory, model=model)


def test_msvq_file_to_params_and_back(tmp_path):
    params = perturbed(abstract_tokenizer_params(TINY_MSVQ), 7)
    state = msvq_torch_layout.torch_state_from_params(params, len(TINY_MSVQ.patch_nums), TINY_MSVQ.num_phis)
    assert "quantize.quant_resi.qresi_ls.3.weight" in state and "encoder.mid.attn_1.qkv.weight" in state
    directory = str(tmp_path / "msvq")
    convert.convert_msvq(convert.load_torch_file(save_pth(tmp_path / "vae.pth", state)), directory, model=TINY_MSVQ)
    assert_same_tree(load_converted_params(TINY_MSVQ, directory), params)
    assert_same_tree(convert.tokenizer_torch_content("msvq", directory, model=TINY_MSVQ), state)
    with pytest.raises(ConversionError, match=r"unexpected \['encoder.extra.weight'\]"):
        convert.convert_msvq({**state, "encoder.extra.weight": np.zeros(1)}, str(tmp_path / "x"), model=TINY_MSVQ)
    del state[msvq_torch_layout.HIT_BUFFER]  # a buffer the file may leave out
    state.pop("quantize.quant_resi.qresi_ls.2.bias")
    with pytest.raises(ConversionError, match=r"missing from the file: \['quantize.quant_resi.qresi_ls.2.bias'\]$"):
        convert.convert_msvq(state, str(tmp_path / "y"), model=TINY_MSVQ)
    with pytest.raises(ConversionError, match="no such directory"):
        convert.tokenizer_torch_content("msvq", str(tmp_path / "absent"))
