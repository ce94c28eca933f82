"""Loading a run's config and checking `--config.a.b=value` overrides before anything loads.

ml-collections fails a misspelt override with a bare AttributeError; `check_overrides` names
every unknown key with the closest valid one, and keys that were renamed with their new name.
"""
import difflib
import importlib.util
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags

from marjax.errors import ConfigError

# Old spellings -> what replaced them (matched on the dotted key or its section).
RENAMED = {
    "tokenizer.name": "tokenizer.kind: 'pixels', 'kl' (MAR's KL-16 is the default architecture: tokenizer.name="
                      "'kl16' is tokenizer.kind='kl') or 'vq'; tokenizer.name='vae' is the kind of the tokenizer run "
                      "(tokenizer.kind='kl' or 'vq', with tokenizer.checkpoint=<its workdir>)",
    "vae": "the tokenizer section: --config.vae.<field> is now --config.tokenizer.<field> "
           "(vae.kind is tokenizer.kind)",
}


def config_items(config: ml_collections.ConfigDict, prefix: str = "") -> list[tuple[str, object]]:
    """Every leaf field as (dotted path, value): [("train.base_lr", 1e-4), ...]."""
    items = []
    for name, value in config.items():
        path = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            items += config_items(value, path + ".")
        else:
            items.append((path, value))
    return items


def config_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Every leaf field as a dotted path ("train.base_lr", ...)."""
    return [key for key, _ in config_items(config)]


def config_argument(arg: str | None, choices: Sequence[str] = ()) -> str | None:
    """The argument of a config file's `get_config(arg)` (`--config=file.py:arg`), checked: None or one
    of `choices`; ConfigError otherwise, so a misspelt variant never runs the default silently."""
    if not arg or arg in choices:
        return arg or None
    takes = " or ".join(repr(c) for c in choices) if choices else "no argument"
    raise ConfigError(f"unknown config argument {arg!r}: this config takes {takes}")


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path/to/config.py[:arg]` the way `--config=` does: `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("marjax_run_config", path)
    if module_spec is None:
        raise ConfigError(f"--config={spec}: {path} is not a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except FileNotFoundError as e:
        raise ConfigError(f"--config={spec}: no such file {path}") from e
    try:
        return module.get_config(arg or None)
    except ConfigError as e:
        raise ConfigError(f"--config={spec}: {e}") from e


def check_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Raises ConfigError naming every `--config.<key>=` in argv whose key the config lacks."""
    valid = config_keys(config)
    lines = []
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].partition("=")[0]
            if key in valid:
                continue
            renamed = RENAMED.get(key) or RENAMED.get(key.partition(".")[0])
            if renamed:
                lines.append(f"config key {key!r} was replaced by {renamed}")
            else:
                close = difflib.get_close_matches(key, valid, n=1)
                lines.append(f"unknown config key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if lines:
        raise ConfigError("\n".join(lines) + "\nvalid keys:\n  " + "\n  ".join(valid))


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (for `app.run(flags_parser=...)`), after checking every --config.<key>
    against the config file so a misspelt key exits with the valid ones."""
    specs = [a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")]
    if specs:
        try:
            check_overrides(load_config_file(specs[-1]), argv[1:])
        except ConfigError as e:
            sys.exit(f"error: {e}")
    return flags.FLAGS(argv)
