"""Writing a config as a config file that `--config=` loads: marjax's defaults for the config's task
and every field that differs from them, so the file is short and says what is special."""
import ml_collections

from marjax.config.defaults import base_config
from marjax.config.loading import config_items

_TEMPLATE = '''"""{description}

  python -m marjax.main --config={path} --workdir={workdir} --mode=sample

Written by marjax: the defaults of task={task!r} (marjax/config/defaults.py) with the fields below.
"""
from marjax.config.defaults import base_config
from marjax.config.loading import config_argument

CHANGED = {{
{changed}}}


def get_config(arg=None):
    config_argument(arg)
    c = base_config({task!r})
    for key, value in CHANGED.items():
        section, field = key.split(".")
        c[section][field] = value
    return c
'''


def config_file_source(config: ml_collections.ConfigDict, path: str, description: str, workdir: str) -> str:
    """The text of a config file at `path` whose `get_config()` returns `config` (fields one
    section deep, as every marjax config's), with `description` as its docstring's first line and
    a usage line on `workdir`."""
    defaults = dict(config_items(base_config(config.task)))
    changed = "".join(f"    {key!r}: {value!r},\n" for key, value in config_items(config)
                      if key != "task" and value != defaults[key])
    return _TEMPLATE.format(description=description, path=path, workdir=workdir, task=config.task, changed=changed)


def write_config_file(config: ml_collections.ConfigDict, path: str, description: str, workdir: str) -> None:
    """Writes `config_file_source(config, path, description, workdir)` to `path`."""
    with open(path, "w") as f:
        f.write(config_file_source(config, path, description, workdir))
