"""Converts the published PyTorch checkpoints of MAR, LlamaGen and VAR and their tokenizers, and back.

  python -m marjax.convert --kind=mar --input=checkpoint-last.pth --output=/ckpt/mar_large
  python -m marjax.convert --kind=mar --input=my_ablation.pth --output=/ckpt/mine --heads=8 --latent_channels=32
  python -m marjax.convert --kind=kl16 --input=kl16.ckpt --output=/ckpt/kl16
  python -m marjax.convert --kind=gpt --input=c2i_B_256.pt --output=/ckpt/gpt_b
  python -m marjax.convert --kind=vq --input=vq_ds16_c2i.pt --output=/ckpt/vq16
  python -m marjax.convert --kind=var --input=var_d16.pth --output=/ckpt/var_d16
  python -m marjax.convert --kind=msvq --input=vae_ch160v4096z32.pth --output=/ckpt/var_vae
  python -m marjax.convert --kind=gpt --to=torch --input=/ckpt/gpt_b --output=c2i_B_256.pt

Generators (mar, gpt, var) become step 0 of a marjax workdir: params and EMA params in their task's
state (with a fresh optimizer state) and the preset's config beside them, which `--mode=sample` and
fine-tuning read. Tokenizers (kl16, vq, msvq) become an Orbax params directory, the one
`--config.tokenizer.checkpoint` takes. Sizes are inferred from the shapes:
- mar: any size the reference trains. Widths, depths, MLP ratio, classes, token grid, buffer size
  and the DiffLoss MLP from the shapes (`mar_torch_layout.mar_sizes_from_state`); the heads,
  which the file does not record, are the published size's for that width, else width / 64, else
  `--heads`; the patch size is the token dim over `--latent_channels` (default 16, KL-16's). The
  recipe is the published size's (`--preset` names another), and the config is also written as
  OUTPUT/config.py, which `--config=` takes. The file's "model" and "model_ema" are the params and
  EMA params; `--weights=ema|model` puts one copy in both places.
- gpt: LlamaGen's state dict under "model", "module" or "state_dict", or the bare dict, and its
  "ema" when present (a file with one copy gives it to both); `--weights=ema|model` picks one.
  Width and codebook size from tok_embeddings, depth from the layer count, classes from
  cls_embedding (its last row is the null class). The heads are not in the file: they are the
  heads of the preset of that width and depth, and for other sizes `--preset` must name the
  preset whose heads (and recipe) to take. Neither is the token grid: `--image_size` (default 256;
  384 for LlamaGen's *_384.pt) over VQ-16's stride 16.
- vq: LlamaGen's VQ-16 or VQ-8 by its number of levels, the codebook from quantize.embedding; the
  program prints the `config.tokenizer` fields that build it.
- var: VAR's var_dN.pth by its block count (with shared_ada_lin: d36-s); classes from class_emb,
  codebook size from head. The file holds one copy: it is both params and EMA params.
- msvq: VAR's vae_ch160v4096z32.pth.
Every key must be used and every param filled with the right shape, or the error lists the
missing, unexpected and mismatched ones. `--to=torch` writes marjax weights back as files the
reference code loads: {"model", "model_ema"} for mar; {"model"} for gpt (and "ema" when the EMA
differs; `--weights=ema` writes the EMA as "model", which LlamaGen's samplers read); VAR's bare
state dict with its buffers (one copy: `--weights` picks it when the two differ); {"model"} for kl16
and vq; the bare state dict for msvq. Files are loaded with `torch.load(weights_only=True)`; a
file that also pickles other objects (e.g. training args) needs `--allow_pickle`, and only for
files you trust.
"""
import os
import sys
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import torch
from absl import app, flags

from marjax.checkpoints import RunCheckpoints
from marjax.config.config_file import write_config_file
from marjax.config.defaults import base_config
from marjax.errors import ConversionError, MarjaxError
from marjax.models import gpt_torch_layout, mar_torch_layout, var_torch_layout
from marjax.models.gpt import PRESETS as GPT_PRESETS
from marjax.models.gpt import init_params as init_gpt_params
from marjax.models.mar import PRESETS as MAR_PRESETS
from marjax.models.mar import init_params as init_mar_params
from marjax.models.var import PRESETS as VAR_PRESETS
from marjax.models.var import init_params as init_var_params
from marjax.parallel.sharding import make_mesh
from marjax.tasks import gpt as gpt_task
from marjax.tasks import mar as mar_task
from marjax.tasks import var as var_task
from marjax.tasks.registry import make_task, restore_state
from marjax.tasks.tokenizer_from_config import (Autoencoder, abstract_tokenizer_params, load_converted_params,
                                                tokenizer_spec)
from marjax.tokenizers import kl_torch_layout, llamagen_vq_torch_layout, msvq_torch_layout
from marjax.tokenizers.kl import KL_PRESETS, AutoencoderKL
from marjax.tokenizers.llamagen_vq import PRESETS as VQ_PRESETS
from marjax.tokenizers.llamagen_vq import llamagen_vq
from marjax.tokenizers.msvq_vae import VQVAE
from marjax.tokenizers.vq import VQModel
from marjax.torch_files import load_torch_file
from marjax.torch_layout import num_blocks

KINDS = ("mar", "kl16", "gpt", "vq", "var", "msvq")
# The sizes `--preset` may name, per kind; the other kinds have one architecture.
PRESETS_OF_KIND = {"mar": MAR_PRESETS, "gpt": GPT_PRESETS, "vq": VQ_PRESETS, "var": VAR_PRESETS}
# Where LlamaGen's scripts look for the GPT's state dict in a checkpoint file, in this order.
GPT_STATE_KEYS = ("model", "module", "state_dict")
VQ_PRESET_OF_LEVELS = {len(sizes["ch_mult"]): name for name, sizes in VQ_PRESETS.items()}
NOMINAL_RESOLUTION = 256  # the image size LlamaGen's VQ config places attention by (see `vq_tokenizer_fields`)

KIND = flags.DEFINE_enum("kind", None, list(KINDS), "What the file holds.", required=True)
INPUT = flags.DEFINE_string("input", None, "The .pth/.pt/.ckpt file (or, with --to=torch, the marjax directory).",
                            required=True)
OUTPUT = flags.DEFINE_string("output", None, "Directory to write (or, with --to=torch, the .pth file).",
                             required=True)
WEIGHTS = flags.DEFINE_enum("weights", "both", ["both", "ema", "model"],
                            "mar, gpt: which copies to convert; 'both' keeps raw params and EMA apart (gpt: when the "
                            "file has 'ema'). --to=torch for var: the copy to write.")
PRESET = flags.DEFINE_string("preset", None, "Size (mar, gpt, vq, var: a key of the family's PRESETS); inferred "
                             "from the shapes when omitted. gpt: for a width and depth no preset has, names the "
                             "preset whose heads to use.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 256, "gpt: the image size of the codes it was trained on, which "
                                  "the file does not record: 256 for LlamaGen's *_256.pt, 384 for *_384.pt "
                                  "(16x16 or 24x24 VQ-16 tokens).")
LATENT_CHANNELS = flags.DEFINE_integer("latent_channels", 16, "mar: the tokenizer's latent channels (the reference's "
                                       "vae_embed_dim); with the token dim in the file it gives the patch size.")
HEADS = flags.DEFINE_string("heads", "", "mar: attention heads, which the file does not record: N, or ENCODER,DECODER. "
                            "Default: the published size's heads for its width, else width / 64.")
ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Load with weights_only=False (trusted files only).")
TO = flags.DEFINE_enum("to", "marjax", ["marjax", "torch"], "Conversion direction.")


def parse_heads(text: str) -> tuple[int, int] | None:
    """--heads: "" -> None, "N" -> (N, N), "E,D" -> (E, D); ConversionError for anything else."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) > 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConversionError(f"--heads={text!r}: give a head count N, or ENCODER,DECODER counts")
    return int(parts[0]), int(parts[-1])


def check_preset(kind: str, preset: str | None) -> None:
    """ConversionError unless `preset` is None or a size of `kind`."""
    if preset is None:
        return
    if kind not in PRESETS_OF_KIND:
        raise ConversionError(f"--preset is not used with --kind={kind}: that file has one architecture")
    if preset not in PRESETS_OF_KIND[kind]:
        raise ConversionError(f"--preset={preset!r} is not a --kind={kind} size; choose one of "
                              f"{sorted(PRESETS_OF_KIND[kind])}")


def _fit(to_params, state: dict, target, reference_state: Callable[[], dict]) -> dict:
    """A layout module's state dict -> params, its ValueError (listing the unexpected keys, shape
    mismatches and the params left unfilled) as a ConversionError that also names the missing keys
    as the reference spells them: those of `reference_state()` (the file `target` would give, from
    shapes only) that `state` lacks."""
    try:
        return to_params(state, target)
    except ValueError as e:
        missing = sorted(set(reference_state()) - set(state))
        raise ConversionError(f"{e}; keys missing from the file: {missing}" if missing else str(e)) from e


def zeros_of_shapes(shapes):
    """Broadcast zeros of a tree of shapes: a state dict's keys and shapes without allocating it."""
    return jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), shapes)


def _state_dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConversionError(f"the file's {where} is a {type(value).__name__}, not a state dict of named tensors")
    return value


def _some_keys(content: dict, count: int = 8) -> str:
    keys = sorted(content)
    return f"{keys[:count]}" + (f" and {len(keys) - count} more" if len(keys) > count else "")


# ---- generators: a reference file -> step 0 of a workdir -------------------------------------------

def _var_reference_state(params: dict, model) -> dict:
    """VAR's learned entries: a file may leave out the buffers, which the model derives."""
    state = var_torch_layout.torch_state_from_params(params, model)
    return {k: v for k, v in state.items() if k not in var_torch_layout.buffers(model)}


# config.task -> (its model from a config, its init_params, reference state dict -> params of a
# model, params of a model -> the reference's learned entries).
_GENERATORS = {
    "mar": (mar_task.model_from_config, init_mar_params, mar_torch_layout.params_from_torch_state,
            lambda params, model: mar_torch_layout.torch_state_from_params(params)),
    "gpt": (gpt_task.model_from_config, init_gpt_params, gpt_torch_layout.params_from_torch_state,
            lambda params, model: gpt_torch_layout.torch_state_from_params(params)),
    "var": (var_task.model_from_config, init_var_params, var_torch_layout.params_from_torch_state,
            _var_reference_state),
}


def write_workdir(model_state: dict, ema_state: dict, config: ml_collections.ConfigDict, output: str) -> None:
    """State dicts in the reference layout of `config.task` -> step 0 of a workdir for the model of
    `config` (its task's state around the weights: a fresh optimizer state), `config` beside it.
    The same state dict object for both maps once."""
    model_from_config, init_params, to_params, to_state = _GENERATORS[config.task]
    model = model_from_config(config)

    def reference_state():
        return to_state(zeros_of_shapes(jax.eval_shape(lambda: init_params(model, jax.random.key(0)))), model)

    params = _fit(to_params, model_state, model, reference_state)
    ema_params = params if ema_state is model_state else _fit(to_params, ema_state, model, reference_state)
    task = make_task(config, make_mesh(devices=jax.devices()[:1]))
    checkpoints = RunCheckpoints(output, keep=1)
    if checkpoints.latest_step() is not None:
        raise ConversionError(f"--output={output} already holds checkpoints; choose a new directory")
    checkpoints.save(0, jax.device_put(task.state_from_params(params, ema_params)), None, config)
    checkpoints.close()


def mar_config_from_state(state: dict[str, np.ndarray], preset: str | None = None, latent_channels: int = 16,
                          heads: tuple[int, int] | None = None) -> tuple[str, ml_collections.ConfigDict]:
    """(a name for the size, the run config) of a reference MAR state dict: every size read from its
    shapes (`mar_torch_layout.mar_sizes_from_state`, with `latent_channels` and `heads` settling
    what the shapes leave open), on the ImageNet recipe of `preset`, else of the published size
    with these sizes, else MAR-L's. KL-16 tokens of `latent_channels` channels; the image size
    is the token grid times the tokenizer's stride. The name is the published size's, or
    "custom"."""
    try:
        sizes = mar_torch_layout.mar_sizes_from_state(state, latent_channels, heads)
    except KeyError as e:
        raise ConversionError(f"not a MAR state dict: key {e} is missing; found keys {_some_keys(state)}") from e
    except ValueError as e:
        raise ConversionError(str(e)) from e
    latent_size, num_classes = sizes.pop("latent_size"), sizes.pop("num_classes")
    sizes.pop("latent_channels")
    published = next((name for name, fields in MAR_PRESETS.items()
                      if all(sizes[k] == v for k, v in fields.items())), None)
    imagenet = (latent_size, latent_channels, num_classes, sizes["buffer_size"], sizes["patch_size"],
                sizes["mlp_ratio"]) == (16, 16, 1000, 64, 1, 4.0)
    config = mar_task.imagenet_mar_config(preset or published or "mar_large", cfg=1.0)
    config.model.update(sizes)
    config.tokenizer.embed_dim = latent_channels
    config.data.num_classes = num_classes
    config.data.image_size = latent_size * tokenizer_spec(config).stride
    return (published if published and imagenet else "custom"), config


def mar_state_dicts(content: dict, weights: str) -> tuple[dict, dict]:
    """(params state dict, EMA state dict) chosen from the file's "model" / "model_ema"."""
    available = [k for k in ("model", "model_ema") if k in content]
    if not available:
        raise ConversionError(f"expected 'model' and/or 'model_ema' in the file, found keys {sorted(content)}")
    for key in available:
        _state_dict(content[key], repr(key))
    if weights == "both":
        if len(available) < 2:
            raise ConversionError(f"--weights=both needs 'model' and 'model_ema'; the file has {available}: "
                                  f"use --weights={'ema' if 'model_ema' in available else 'model'}")
        return content["model"], content["model_ema"]
    key = "model_ema" if weights == "ema" else "model"
    if key not in content:
        raise ConversionError(f"--weights={weights}: the file has no {key!r} (it has {available})")
    return content[key], content[key]


def convert_mar(content: dict, output: str, weights: str, preset: str | None, latent_channels: int = 16,
                heads: tuple[int, int] | None = None) -> tuple[str, ml_collections.ConfigDict]:
    """Writes step 0 of a marjax workdir at `output`, and its config as `output`/config.py, for a
    reference MAR file of any size (`mar_config_from_state`); returns (the size's name, the config)."""
    model_state, ema_state = mar_state_dicts(content, weights)
    name, config = mar_config_from_state(model_state, preset, latent_channels, heads)
    write_workdir(model_state, ema_state, config, output)
    write_config_file(config, os.path.join(output, "config.py"), f"A MAR converted by marjax.convert ({name}).", output)
    return name, config


def gpt_state_dicts(content: dict, weights: str) -> tuple[dict, dict]:
    """(params state dict, EMA state dict) of a LlamaGen GPT file: the state dict under "model",
    "module" or "state_dict" (or the bare dict), and "ema" for the EMA when the file has it and
    `weights` is "both"; one copy in both places otherwise."""
    key = next((k for k in GPT_STATE_KEYS if k in content), None)
    bare = key is None and "tok_embeddings.weight" in content
    model_state = _state_dict(content[key], repr(key)) if key else (content if bare else None)
    ema_state = _state_dict(content["ema"], "'ema'") if "ema" in content and not bare else None
    if weights == "ema":
        if ema_state is None:
            raise ConversionError(f"--weights=ema: the file has no 'ema' (LlamaGen saves one only when trained with "
                                  f"--ema; found keys {_some_keys(content)}): use --weights=model")
        return ema_state, ema_state
    if model_state is None:
        raise ConversionError(f"expected LlamaGen's GPT state dict under {list(GPT_STATE_KEYS)} or a bare state dict "
                              f"(with tok_embeddings.weight); found keys {_some_keys(content)}"
                              + ("; the file has 'ema': use --weights=ema" if ema_state is not None else ""))
    if weights == "model" or ema_state is None:
        return model_state, model_state
    return model_state, ema_state


def infer_gpt(state: dict[str, np.ndarray], preset: str | None = None) -> dict:
    """The sizes of a LlamaGen GPT state dict: {"preset", "width", "depth", "vocab_size",
    "num_classes"}. Without `preset`, the preset of that width and depth (it gives the heads, which
    the file does not record); ConversionError asking for --preset when none has them."""
    try:
        vocab_size, width = np.shape(state["tok_embeddings.weight"])
        rows = np.shape(state["cls_embedding.embedding_table.weight"])[0]
    except KeyError as e:
        raise ConversionError(f"not a LlamaGen GPT state dict: key {e} is missing") from e
    depth = num_blocks(state, "layers")
    if preset is None:
        preset = next((name for name, sizes in GPT_PRESETS.items()
                       if (sizes["width"], sizes["depth"]) == (width, depth)), None)
        if preset is None:
            raise ConversionError(
                f"no GPT preset has width {width} and depth {depth}, and the file does not record the number of "
                f"attention heads: give --preset=<{'|'.join(GPT_PRESETS)}> to use that preset's heads and recipe "
                f"at the file's width and depth")
    if rows < 2:
        raise ConversionError(f"cls_embedding has {rows} row(s): expected the classes and a null class")
    return dict(preset=preset, width=int(width), depth=depth, vocab_size=int(vocab_size), num_classes=int(rows) - 1)


def gpt_recipe(preset: str) -> ml_collections.ConfigDict:
    """`configs/llamagen_gpt.py`'s config: LlamaGen's README guidance for the CFG scale."""
    return gpt_task.imagenet_gpt_config(preset, cfg=2.0 if preset in ("gpt_b", "gpt_l") else 1.75)


def llamagen_gpt_config(sizes: dict, image_size: int) -> ml_collections.ConfigDict:
    """LlamaGen's c2i config for `infer_gpt`'s sizes, on VQ-16 codes of `image_size` images."""
    config = gpt_recipe(sizes["preset"])
    config.model.update(width=sizes["width"], depth=sizes["depth"])
    heads = config.model.num_heads
    if sizes["width"] % heads or (sizes["width"] // heads) % 4:
        raise ConversionError(f"width {sizes['width']} with {heads} heads (of --preset={sizes['preset']}) gives no "
                              f"head dim divisible by 4, which 2-D RoPE needs; choose a preset with other heads")
    config.tokenizer.codebook_size = sizes["vocab_size"]
    config.data.num_classes = sizes["num_classes"]
    stride = tokenizer_spec(config).stride
    if image_size % stride:
        raise ConversionError(f"--image_size={image_size} is not a multiple of the VQ tokenizer's stride {stride} "
                              f"(LlamaGen's files: 256 or 384)")
    config.data.image_size = image_size
    return config


def convert_gpt(content: dict, output: str, weights: str, preset: str | None, image_size: int
                ) -> tuple[str, ml_collections.ConfigDict]:
    """Writes step 0 of a marjax workdir at `output` for a LlamaGen c2i GPT file; returns (the preset
    that gave the heads and recipe, the config written)."""
    model_state, ema_state = gpt_state_dicts(content, weights)
    sizes = infer_gpt(model_state, preset)
    config = llamagen_gpt_config(sizes, image_size)
    write_workdir(model_state, ema_state, config, output)
    return sizes["preset"], config


def infer_var(state: dict[str, np.ndarray], preset: str | None = None) -> dict:
    """The sizes of a VAR state dict: {"preset", "vocab_size", "num_classes"}. Without `preset`, d{depth}
    from the block count, "d36-s" with shared AdaLN (shared_ada_lin); ConversionError if no preset."""
    try:
        rows = np.shape(state["class_emb.weight"])[0]
        vocab_size = np.shape(state["head.weight"])[0]
    except KeyError as e:
        raise ConversionError(f"not a VAR state dict (var_dN.pth holds it at the top level): key {e} is missing; "
                              f"found keys {_some_keys(state)}") from e
    if preset is None:
        depth, shared = num_blocks(state, "blocks"), "shared_ada_lin.1.weight" in state
        preset = f"d{depth}" + ("-s" if shared else "")
        if preset not in VAR_PRESETS:
            raise ConversionError(f"no VAR preset has depth {depth}{' with shared AdaLN' if shared else ''} "
                                  f"(the presets: {sorted(VAR_PRESETS)}); give --preset to force one")
    return dict(preset=preset, vocab_size=int(vocab_size), num_classes=int(rows) - 1)


def var_config(sizes: dict) -> ml_collections.ConfigDict:
    """VAR's README recipe (`configs/var_imagenet.py`) for `infer_var`'s sizes."""
    config = var_task.imagenet_var_config(sizes["preset"])
    config.tokenizer.codebook_size = sizes["vocab_size"]
    config.data.num_classes = sizes["num_classes"]
    return config


def convert_var(content: dict, output: str, preset: str | None) -> tuple[str, ml_collections.ConfigDict]:
    """Writes step 0 of a marjax workdir at `output` for a VAR file (its one copy as params and EMA
    params); returns (its preset, the config written)."""
    sizes = infer_var(content, preset)
    config = var_config(sizes)
    write_workdir(content, content, config, output)
    return sizes["preset"], config


# ---- tokenizers: a reference file -> an Orbax params directory --------------------------------------

def write_params_dir(params: dict, output: str) -> None:
    """`params` as the Orbax checkpoint that `--config.tokenizer.checkpoint` reads."""
    if os.path.exists(output):
        raise ConversionError(f"--output={output} already exists; choose a new directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(output), params)
    checkpointer.wait_until_finished()


def kl_model(embed_dim: int = 16) -> AutoencoderKL:
    """The reference's KL VAE (KL-16's architecture) with `embed_dim` latent channels."""
    return AutoencoderKL(**{**KL_PRESETS["kl16"], "embed_dim": embed_dim})


def kl_config(embed_dim: int, directory: str) -> ml_collections.ConfigDict:
    """MAR-L's ImageNet run on the latents of the converted KL VAE in `directory`."""
    config = mar_task.imagenet_mar_config("mar_large", cfg=1.0)
    config.tokenizer.update(kind="kl", checkpoint=directory, embed_dim=embed_dim)
    return config


def convert_kl16(content: dict, output: str, model: AutoencoderKL | None = None) -> AutoencoderKL:
    """Writes the VAE params as an Orbax checkpoint at `output` and returns their model: `model`, or
    the reference's KL VAE with the latent width (embed_dim) of the file's post_quant_conv. With
    the inferred model, also `output`/config.py (`kl_config`), whose tokenizer section reads it."""
    state = _state_dict(content.get("model", content), "'model'")
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # training-time loss modules
    inferred = model is None
    if inferred:
        if "post_quant_conv.weight" not in state:
            raise ConversionError(f"not a KL VAE state dict: key 'post_quant_conv.weight' is missing; found keys "
                                  f"{_some_keys(state)}")
        model = kl_model(int(np.shape(state["post_quant_conv.weight"])[0]))
    target = abstract_tokenizer_params(model)
    write_params_dir(_fit(kl_torch_layout.params_from_torch_state, state, target,
                          lambda: kl_torch_layout.torch_state_from_params(zeros_of_shapes(target))), output)
    if inferred:
        write_config_file(kl_config(model.embed_dim, output), os.path.join(output, "config.py"),
                          f"MAR-L's ImageNet recipe on the latents of the KL VAE (embed_dim {model.embed_dim}) in "
                          f"this directory.", "<workdir>")
    return model


def infer_vq_preset(num_levels: int) -> str:
    """LlamaGen's VQ of `num_levels` resolution levels (len(ch_mult)): 5 VQ-16, 4 VQ-8."""
    if num_levels not in VQ_PRESET_OF_LEVELS:
        published = ", ".join(f"{name}: {levels} levels" for levels, name in VQ_PRESET_OF_LEVELS.items())
        raise ConversionError(f"a LlamaGen VQ with {num_levels} levels is none of the published ones ({published})")
    return VQ_PRESET_OF_LEVELS[num_levels]


def vq_model_for_state(state: dict[str, np.ndarray], preset: str | None = None) -> VQModel:
    """`llamagen_vq` of the state dict's levels (`preset` forces one), with its codebook's size."""
    if "quantize.embedding.weight" not in state:
        raise ConversionError(f"not a LlamaGen VQ state dict: key 'quantize.embedding.weight' is missing; found keys "
                              f"{_some_keys(state)}")
    preset = preset or infer_vq_preset(num_blocks(state, "encoder.conv_blocks"))
    codebook_size, code_dim = np.shape(state["quantize.embedding.weight"])
    return llamagen_vq(preset, codebook_size=int(codebook_size), code_dim=int(code_dim))


def vq_tokenizer_fields(model: VQModel) -> dict:
    """The `config.tokenizer` fields that build `model` (a `llamagen_vq`) through
    `autoencoder_from_config`, with attention placed as LlamaGen's config says it: at resolution
    256 / stride of a nominal 256 image (the lowest level) in the encoder, at the lowest level of
    the decoder's up path."""
    return dict(kind="vq", ch=model.ch, ch_mult=tuple(model.ch_mult), num_res_blocks=model.num_res_blocks,
                attn_resolutions=(NOMINAL_RESOLUTION // model.stride,), resolution=NOMINAL_RESOLUTION,
                decoder_attn_levels=tuple(model.decoder_attn_levels), z_channels=model.z_channels,
                codebook_size=model.codebook_size, code_dim=model.code_dim, l2_normalize=model.l2_normalize)


def convert_vq(content: dict, output: str, preset: str | None = None, model: VQModel | None = None) -> VQModel:
    """Writes a LlamaGen VQ file's params (checkpoint["model"]) as an Orbax checkpoint at `output`;
    returns the VQModel (by default inferred from the file: see `vq_model_for_state`)."""
    state = _state_dict(content.get("model", content), "'model'")
    model = model or vq_model_for_state(state, preset)
    target = abstract_tokenizer_params(model)

    def reference_state():  # without the usage buffer, which a file may leave out
        full = llamagen_vq_torch_layout.torch_state_from_params(zeros_of_shapes(target))
        return {k: v for k, v in full.items() if k != llamagen_vq_torch_layout.USAGE_BUFFER}

    write_params_dir(_fit(llamagen_vq_torch_layout.params_from_torch_state, state, target, reference_state), output)
    return model


def convert_msvq(content: dict, output: str, model: VQVAE = VQVAE()) -> None:
    """Writes VAR's VQVAE params (vae_ch160v4096z32.pth, a bare state dict) as an Orbax checkpoint at `output`."""
    state = _state_dict(content.get("model", content), "'model'")
    target = abstract_tokenizer_params(model)

    def reference_state():  # without the usage buffer, which a file may leave out
        full = msvq_torch_layout.torch_state_from_params(zeros_of_shapes(target), len(model.patch_nums), model.num_phis)
        return {k: v for k, v in full.items() if k != msvq_torch_layout.HIT_BUFFER}

    write_params_dir(_fit(msvq_torch_layout.params_from_torch_state, state, target, reference_state), output)


# ---- marjax -> reference files ---------------------------------------------------------------------

def _same(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def read_workdir(kind: str, directory: str) -> tuple[ml_collections.ConfigDict, object]:
    """(config, state) of the latest checkpoint of a marjax workdir of `kind`'s task."""
    if not os.path.isdir(os.path.join(directory, "checkpoints")):
        raise ConversionError(f"--input={directory} is not a marjax workdir (it has no checkpoints directory)")
    checkpoints = RunCheckpoints(directory, read_only=True)
    step = checkpoints.latest_step()
    if step is None:
        checkpoints.close()
        raise ConversionError(f"--input={directory} holds no marjax checkpoint")
    config = ml_collections.ConfigDict(checkpoints.saved_config(step))
    checkpoints.close()
    if config.task != kind:
        raise ConversionError(f"--input={directory} holds a task={config.task!r} run, not {kind!r}")
    _, state, _ = restore_state(config, directory, step)
    return config, state


def generator_torch_content(kind: str, directory: str, weights: str = "both") -> dict:
    """A workdir's weights as the reference's checkpoint content (numpy state dicts): see the module doc."""
    config, state = read_workdir(kind, directory)
    params, ema_params = state.params, state.ema_params
    if kind == "mar" and config.data.num_classes == 0:
        raise ConversionError(f"{directory} holds an unconditional MAR (data.num_classes=0); LTH14/mar's model always "
                              f"conditions on a class (its class_emb indexes every label), so it has no such layout")
    if kind == "mar":
        return {"model": mar_torch_layout.torch_state_from_params(params),
                "model_ema": mar_torch_layout.torch_state_from_params(ema_params)}
    if kind == "gpt":
        if weights == "ema":
            return {"model": gpt_torch_layout.torch_state_from_params(ema_params)}
        content = {"model": gpt_torch_layout.torch_state_from_params(params)}
        if weights == "both" and not _same(params, ema_params):
            content["ema"] = gpt_torch_layout.torch_state_from_params(ema_params)
        return content
    if weights == "both" and not _same(params, ema_params):
        raise ConversionError(f"{directory}'s params and EMA params differ and VAR's file holds one copy: choose "
                              f"--weights=ema or --weights=model")
    return var_torch_layout.torch_state_from_params(ema_params if weights == "ema" else params,
                                                    var_task.model_from_config(config))


def params_tree(directory: str) -> dict:
    """The shapes of the params an Orbax directory holds (its metadata tree; nothing is read)."""
    metadata = ocp.StandardCheckpointer().metadata(os.path.abspath(directory))
    return getattr(getattr(metadata, "item_metadata", metadata), "tree", metadata)


def vq_model_of_directory(directory: str, preset: str | None = None) -> VQModel:
    """The `llamagen_vq` whose params an Orbax directory holds, from its levels and codebook."""
    tree = params_tree(directory)
    if "quantizer" not in tree or "encoder" not in tree:
        raise ConversionError(f"{directory} does not hold a VQ tokenizer's params (its top level: {sorted(tree)})")
    preset = preset or infer_vq_preset(llamagen_vq_torch_layout.num_levels(tree))
    codebook_size, code_dim = tree["quantizer"]["codebook"].shape
    return llamagen_vq(preset, codebook_size=int(codebook_size), code_dim=int(code_dim))


def kl_model_of_directory(directory: str) -> AutoencoderKL:
    """The `kl_model` whose params an Orbax directory holds, by its post_quant_conv's width."""
    tree = params_tree(directory)
    if "post_quant_conv" not in tree:
        raise ConversionError(f"{directory} does not hold a KL VAE's params (its top level: {sorted(tree)})")
    return kl_model(int(tree["post_quant_conv"]["kernel"].shape[-1]))


def tokenizer_torch_content(kind: str, directory: str, preset: str | None = None,
                            model: Autoencoder | None = None) -> dict:
    """A converted tokenizer directory as the reference's checkpoint content; `model` defaults to the
    published architecture (vq: the one the directory's shapes name)."""
    if not os.path.isdir(directory):
        raise ConversionError(f"--input={directory}: no such directory")
    if kind == "vq":
        model = model or vq_model_of_directory(directory, preset)
    elif model is None:
        model = kl_model_of_directory(directory) if kind == "kl16" else VQVAE()
    try:
        params = load_converted_params(model, directory)
    except (ValueError, KeyError) as e:
        raise ConversionError(f"{directory} does not hold the params of --kind={kind}'s tokenizer: {e}") from e
    if kind == "kl16":
        return {"model": kl_torch_layout.torch_state_from_params(params)}
    if kind == "vq":
        return {"model": llamagen_vq_torch_layout.torch_state_from_params(params)}
    return msvq_torch_layout.torch_state_from_params(params, len(model.patch_nums), model.num_phis)


def save_torch(content: dict, output: str) -> None:
    """Nested dicts of numpy arrays -> a .pth of tensors (dtypes kept) that `torch.load(weights_only=True)` reads."""
    def to_torch(value):
        if isinstance(value, dict):
            return {k: to_torch(v) for k, v in value.items()}
        return torch.from_numpy(np.array(value))  # a writable, contiguous copy

    torch.save(to_torch(content), output)


def export_torch(kind: str, directory: str, output: str, weights: str = "both", preset: str | None = None) -> None:
    """marjax weights -> a .pth in the reference layout (see the module doc)."""
    if kind in _GENERATORS:
        content = generator_torch_content(kind, directory, weights)
    else:
        content = tokenizer_torch_content(kind, directory, preset)
    save_torch(content, output)


# ---- the command line ------------------------------------------------------------------------------

def _flag_value(value) -> str:
    if isinstance(value, tuple):
        return "'(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")'"
    return repr(value) if isinstance(value, str) else str(value)


def config_overrides(config: ml_collections.ConfigDict, default: ml_collections.ConfigDict,
                     keys: tuple[str, ...]) -> list[str]:
    """`--config.<key>=value` for each of `keys` ("section.field") where `config` differs from `default`."""
    out = []
    for key in keys:
        section, field = key.split(".")
        if config[section][field] != default[section][field]:
            out.append(f"--config.{key}={_flag_value(config[section][field])}")
    return out


def vq_usage(model: VQModel, output: str) -> str:
    """The `--config.tokenizer.*` lines that read the converted VQ at `output`."""
    fields = vq_tokenizer_fields(model)
    defaults = base_config("gpt").tokenizer
    always = ("kind", "ch_mult", "attn_resolutions", "resolution", "decoder_attn_levels")
    lines = [f"--config.tokenizer.{k}={_flag_value(v)}" for k, v in fields.items()
             if k in always or v != defaults[k]]
    return " \\\n    ".join([f"--config.tokenizer.checkpoint={output}"] + lines)


def main(argv: list[str]) -> None:
    del argv
    kind, output = KIND.value, OUTPUT.value
    try:
        check_preset(kind, PRESET.value)
        if TO.value == "torch":
            export_torch(kind, INPUT.value, output, WEIGHTS.value, PRESET.value)
            print(f"wrote {output}")
            return
        content = load_torch_file(INPUT.value, ALLOW_PICKLE.value)
        if kind == "mar":
            name, config = convert_mar(content, output, WEIGHTS.value, PRESET.value, LATENT_CHANNELS.value,
                                       parse_heads(HEADS.value))
            m = config.model
            print(f"wrote a MAR ({name}: widths {m.encoder_width}/{m.decoder_width}, depths {m.encoder_depth}/"
                  f"{m.decoder_depth}, heads {m.encoder_heads}/{m.decoder_heads}, DiffLoss {m.diffloss_depth} x "
                  f"{m.diffloss_width}, {config.data.num_classes} classes, {config.data.image_size} px) to "
                  f"{output}/checkpoints/0 and its config to {output}/config.py; sample with\n  python -m "
                  f"marjax.main --config={output}/config.py --workdir={output} --mode=sample "
                  f"--config.tokenizer.checkpoint=<converted kl16 dir>")
        elif kind == "gpt":
            preset, config = convert_gpt(content, output, WEIGHTS.value, PRESET.value, IMAGE_SIZE.value)
            grid = config.data.image_size // tokenizer_spec(config).stride
            extra = config_overrides(config, gpt_recipe(preset), ("model.width", "model.depth", "data.image_size",
                                                                   "data.num_classes", "tokenizer.codebook_size"))
            print(f"wrote a GPT of width {config.model.width}, depth {config.model.depth} and {config.model.num_heads} "
                  f"heads ({preset}'s) for {grid}x{grid} VQ-16 tokens (--image_size={config.data.image_size}) to "
                  f"{output}/checkpoints/0; sample with\n  python -m marjax.main "
                  f"--config=configs/llamagen_gpt.py:{preset} --workdir={output} --mode=sample \\\n    "
                  + " ".join(extra + ["--config.tokenizer.checkpoint=<converted vq16 dir>"]))
        elif kind == "var":
            preset, config = convert_var(content, output, PRESET.value)
            extra = config_overrides(config, var_task.imagenet_var_config(preset),
                                     ("data.num_classes", "tokenizer.codebook_size"))
            print(f"wrote VAR-{preset} to {output}/checkpoints/0; sample with\n  python -m marjax.main "
                  f"--config=configs/var_imagenet.py:{preset} --workdir={output} --mode=sample \\\n    "
                  + " ".join(extra + ["--config.tokenizer.checkpoint=<converted msvq dir>"]))
        elif kind == "vq":
            model = convert_vq(content, output, PRESET.value)
            print(f"wrote LlamaGen's VQ (stride {model.stride}) to {output}; a config reads it with\n    "
                  f"{vq_usage(model, output)}")
        elif kind == "msvq":
            convert_msvq(content, output)
            print(f"wrote VAR's multi-scale VQVAE to {output}; use --config.tokenizer.checkpoint={output} with "
                  f"configs/var_imagenet.py (tokenizer.kind='msvq')")
        else:
            model = convert_kl16(content, output)
            print(f"wrote the KL VAE ({model.embed_dim} latent channels) to {output}; a config reads it with\n    "
                  f"--config.tokenizer.checkpoint={output} --config.tokenizer.embed_dim={model.embed_dim}\n"
                  f"({output}/config.py: MAR-L's ImageNet recipe on these latents)")
    except MarjaxError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
