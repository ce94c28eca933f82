"""Converts the published PyTorch checkpoints of MAR and its KL-16 VAE, and back.

  python -m marjax.convert --kind=mar --input=checkpoint-last.pth --output=/ckpt/mar_large
  python -m marjax.convert --kind=kl16 --input=kl16.ckpt --output=/ckpt/kl16
  python -m marjax.convert --kind=mar --to=torch --input=/ckpt/mar_large --output=mar_large.pth

MAR: the file's "model" and "model_ema" become the params and EMA params of step 0 of a marjax
workdir (with a fresh optimizer state and the preset's config), which `--mode=sample` and
fine-tuning read; `--weights=ema|model` puts one copy in both places. The preset is inferred
from the shapes unless given. KL-16: the VAE params as an Orbax checkpoint, the directory that
`--config.tokenizer.checkpoint` takes. Files are loaded with `torch.load(weights_only=True)`;
a file that also pickles other objects (e.g. training args) needs `--allow_pickle`, and only
for files you trust.
"""
import os
import re
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import torch
from absl import app, flags

from marjax.checkpoints import RunCheckpoints
from marjax.errors import ConversionError
from marjax.models.mar import PRESETS
from marjax.models.mar_torch_layout import params_from_torch_state as mar_params_from_torch_state
from marjax.models.mar_torch_layout import torch_state_from_params as mar_torch_state_from_params
from marjax.parallel.sharding import make_mesh
from marjax.tasks.mar import imagenet_mar_config, model_from_config
from marjax.tasks.registry import make_task, restore_state
from marjax.tasks.tokenizer_from_config import load_converted_params
from marjax.tokenizers.kl import KL_PRESETS, AutoencoderKL, init_vae_params
from marjax.tokenizers.kl_torch_layout import params_from_torch_state as kl_params_from_torch_state
from marjax.tokenizers.kl_torch_layout import torch_state_from_params as kl_torch_state_from_params
from marjax.torch_files import load_torch_file

KIND = flags.DEFINE_enum("kind", None, ["mar", "kl16"], "What the file holds.", required=True)
INPUT = flags.DEFINE_string("input", None, "The .pth/.ckpt file (or, with --to=torch, the marjax directory).",
                            required=True)
OUTPUT = flags.DEFINE_string("output", None, "Directory to write (or, with --to=torch, the .pth file).",
                             required=True)
WEIGHTS = flags.DEFINE_enum("weights", "both", ["both", "ema", "model"],
                            "MAR: which copies to convert; 'both' keeps raw params and EMA apart.")
PRESET = flags.DEFINE_enum("preset", None, sorted(PRESETS), "MAR size; inferred from the shapes when omitted.")
ALLOW_PICKLE = flags.DEFINE_bool("allow_pickle", False, "Load with weights_only=False (trusted files only).")
TO = flags.DEFINE_enum("to", "marjax", ["marjax", "torch"], "Conversion direction.")


def infer_mar_preset(state: dict[str, np.ndarray]) -> str:
    """The preset whose widths and depths match the state dict; ConversionError listing them if none."""
    def depth(prefix):
        return len({int(m.group(1)) for k in state if (m := re.match(prefix + r"\.(\d+)\.", k))})

    try:
        found = dict(encoder_width=state["z_proj.weight"].shape[0], encoder_depth=depth("encoder_blocks"),
                     decoder_width=state["decoder_embed.weight"].shape[0], decoder_depth=depth("decoder_blocks"),
                     diffloss_width=state["diffloss.net.input_proj.weight"].shape[0],
                     diffloss_depth=depth("diffloss.net.res_blocks"))
    except KeyError as e:
        raise ConversionError(f"not a MAR state dict: key {e} is missing") from e
    for name, sizes in PRESETS.items():
        if all(found[k] == sizes[k] for k in found):
            return name
    raise ConversionError(f"no MAR preset has these sizes: {found}; give --preset to force one")


def mar_state_dicts(content: dict, weights: str) -> tuple[dict, dict]:
    """(params state dict, EMA state dict) chosen from the file's "model" / "model_ema"."""
    available = [k for k in ("model", "model_ema") if k in content]
    if not available:
        raise ConversionError(f"expected 'model' and/or 'model_ema' in the file, found keys {sorted(content)}")
    for key in available:
        if not isinstance(content[key], dict):
            raise ConversionError(f"the file's {key!r} is a {type(content[key]).__name__}, not a state dict of "
                                  f"named tensors")
    if weights == "both":
        if len(available) < 2:
            raise ConversionError(f"--weights=both needs 'model' and 'model_ema'; the file has {available}: "
                                  f"use --weights={'ema' if 'model_ema' in available else 'model'}")
        return content["model"], content["model_ema"]
    key = "model_ema" if weights == "ema" else "model"
    if key not in content:
        raise ConversionError(f"--weights={weights}: the file has no {key!r} (it has {available})")
    return content[key], content[key]


def convert_mar(content: dict, output: str, weights: str, preset: str | None) -> str:
    """Writes step 0 of a marjax workdir at `output` for a published size; returns the preset."""
    model_state, ema_state = mar_state_dicts(content, weights)
    preset = preset or infer_mar_preset(model_state)
    write_mar_workdir(model_state, ema_state, imagenet_mar_config(preset, cfg=1.0), output)
    return preset


def write_mar_workdir(model_state: dict, ema_state: dict, config: ml_collections.ConfigDict, output: str) -> None:
    """State dicts in the reference layout -> step 0 of a workdir for the model of `config`
    (its task's state around the weights: a fresh optimizer state)."""
    model = model_from_config(config)
    try:
        params = mar_params_from_torch_state(model_state, model)
        ema_params = mar_params_from_torch_state(ema_state, model)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    state = make_task(config, make_mesh(devices=jax.devices()[:1])).state_from_params(params, ema_params)
    checkpoints = RunCheckpoints(output, keep=1)
    if checkpoints.latest_step() is not None:
        raise ConversionError(f"--output={output} already holds checkpoints; choose a new directory")
    checkpoints.save(0, jax.device_put(state), None, config)
    checkpoints.close()


def convert_kl16(content: dict, output: str, model: AutoencoderKL = AutoencoderKL(**KL_PRESETS["kl16"])) -> None:
    """Writes the VAE params (of `model`, by default kl16) as an Orbax checkpoint at `output`."""
    state = content.get("model", content)
    if not isinstance(state, dict):
        raise ConversionError(f"the file's 'model' is a {type(state).__name__}, not a state dict of named tensors")
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}  # training-time loss modules
    target = jax.eval_shape(lambda: init_vae_params(model, jax.random.key(0), 32))
    try:
        params = kl_params_from_torch_state(state, target)
    except ValueError as e:
        raise ConversionError(str(e)) from e
    if os.path.exists(output):
        raise ConversionError(f"--output={output} already exists; choose a new directory")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(os.path.abspath(output), params)
    checkpointer.wait_until_finished()


def export_torch(kind: str, directory: str, output: str) -> None:
    """marjax weights -> a .pth in the reference layout ({"model", "model_ema"} for MAR, {"model"} for kl16)."""
    if kind == "kl16":
        model = AutoencoderKL(**KL_PRESETS["kl16"])
        state = {"model": kl_torch_state_from_params(load_converted_params(model, directory))}
    else:
        state = _mar_torch_state(directory)
    torch.save({name: {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}
                for name, sd in state.items()}, output)


def _mar_torch_state(directory: str) -> dict:
    checkpoints = RunCheckpoints(directory, read_only=True)
    step = checkpoints.latest_step()
    if step is None:
        raise ConversionError(f"--input={directory} holds no marjax checkpoint")
    config = ml_collections.ConfigDict(checkpoints.saved_config(step))
    checkpoints.close()
    _, state, _ = restore_state(config, directory, step)
    return {"model": mar_torch_state_from_params(state.params),
            "model_ema": mar_torch_state_from_params(state.ema_params)}


def main(argv: list[str]) -> None:
    del argv
    try:
        if TO.value == "torch":
            export_torch(KIND.value, INPUT.value, OUTPUT.value)
            print(f"wrote {OUTPUT.value}")
            return
        content = load_torch_file(INPUT.value, ALLOW_PICKLE.value)
        if KIND.value == "mar":
            preset = convert_mar(content, OUTPUT.value, WEIGHTS.value, PRESET.value)
            print(f"wrote {preset} weights to {OUTPUT.value}/checkpoints/0; sample with\n  python -m marjax.main "
                  f"--config=configs/{preset}.py --workdir={OUTPUT.value} --mode=sample "
                  f"--config.tokenizer.checkpoint=<converted kl16 dir>")
        else:
            convert_kl16(content, OUTPUT.value)
            print(f"wrote the KL-16 VAE to {OUTPUT.value}; use --config.tokenizer.checkpoint={OUTPUT.value}")
    except ConversionError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
