"""Train-step time of the working tree against another git revision, in one process, alternating calls.

  python benchmarks/ab_train_step.py --against=HEAD~1 --steps=30
  python benchmarks/ab_train_step.py --against=HEAD~1 --step-kwargs='{"mask_buckets": 3}'

On a shared machine whose speed drifts by 10-20% between runs, two processes timed one after
the other cannot resolve a 5% change; calls alternated in one process can, because both see the
same drift. The other revision's `marjax` package is exported with `git archive` into a
temporary folder and imported as `marjax_against` (its imports of `marjax` rewritten). Both
steps train the same model size from the same initial state on the same batch and rng, so they
see the same mask counts. Prints one JSON line: each side's median step time and the median of
the per-step ratios (working tree / against; below 1 is faster).
"""
import argparse
import functools
import importlib
import importlib.util
import json
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bench_setup import SIZES, TINY_CPU, run_facts
from marjax.tasks.recipe import learning_rate_schedule

ALIAS = "marjax_against"
REPO = pathlib.Path(__file__).resolve().parent.parent


def export_package(revision: str, folder: pathlib.Path) -> None:
    """Writes `revision`'s marjax package to folder/ALIAS with its imports of marjax renamed."""
    archive = subprocess.run(["git", "archive", revision, "marjax"], cwd=REPO, capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"error: git archive {revision} failed: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    (folder / "marjax").rename(folder / ALIAS)
    for path in (folder / ALIAS).rglob("*.py"):
        text = re.sub(r"\bmarjax\.", f"{ALIAS}.", path.read_text())
        text = re.sub(r"\bfrom marjax import\b", f"from {ALIAS} import", text)
        path.write_text(re.sub(r"^import marjax$", f"import {ALIAS}", text, flags=re.M))


def mar_training_api(package: str) -> tuple[Any, Callable, Callable, Callable]:
    """(MAR module, make_optimizer(schedule), fresh_state(model, tx, rng), make_train_step) of
    `package`, in the layered layout or in the one before it (a revision older than the layout)."""
    mar = importlib.import_module(f"{package}.models.mar")
    if importlib.util.find_spec(f"{package}.train_step") is not None:
        old = importlib.import_module(f"{package}.train_step")
        return mar, old.make_optimizer, old.create_train_state, old.make_train_step
    mar_step = importlib.import_module(f"{package}.tasks.mar_step")
    recipe = importlib.import_module(f"{package}.tasks.recipe")
    train_state = importlib.import_module(f"{package}.tasks.train_state")
    return (mar, lambda schedule: recipe.make_optimizer(schedule, mar_step.weight_decay_mask),
            lambda model, tx, rng: train_state.create_train_state(functools.partial(mar.init_params, model), tx, rng),
            mar_step.make_train_step)


def compiled_step(package: str, size: str, batch: dict, step_kwargs: dict[str, Any]) -> tuple[Any, Any, float]:
    """(compiled train step, fresh state, compile seconds) of `package` for the model `size`."""
    mar, make_optimizer, fresh_state, make_train_step = mar_training_api(package)
    model = mar.MAR(**TINY_CPU) if size == "tiny-cpu" else mar.mar_preset(size)
    schedule = learning_rate_schedule(1e-4, 100)
    tx = make_optimizer(schedule)
    state = jax.jit(functools.partial(fresh_state, model, tx))(jax.random.key(0))
    start = time.perf_counter()
    step = jax.jit(make_train_step(model, tx, schedule, **step_kwargs), donate_argnums=0)
    compiled = step.lower(state, batch, jax.random.key(2)).compile()
    return compiled, state, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="a git revision of this repository, e.g. HEAD~1")
    parser.add_argument("--size", choices=SIZES, default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed calls of each step, alternating")
    parser.add_argument("--step-kwargs", type=json.loads, default={},
                        help="JSON keyword arguments of the working tree's make_train_step")
    parser.add_argument("--against-step-kwargs", type=json.loads, default={},
                        help="JSON keyword arguments of the other revision's make_train_step")
    args = parser.parse_args()

    side = TINY_CPU["latent_size"] if args.size == "tiny-cpu" else 16
    channels = TINY_CPU["latent_channels"] if args.size == "tiny-cpu" else 16
    batch = {"latents": jax.random.normal(jax.random.key(1), (args.batch, side, side, channels)),
             "labels": jnp.arange(args.batch) % 10}
    with tempfile.TemporaryDirectory() as folder:  # kept until the end: imports may be lazy
        export_package(args.against, pathlib.Path(folder))
        sys.path.insert(0, folder)
        sides = {"against": compiled_step(ALIAS, args.size, batch, args.against_step_kwargs),
                 "working_tree": compiled_step("marjax", args.size, batch, args.step_kwargs)}
        states = {name: state for name, (_, state, _) in sides.items()}
        times: dict[str, list[float]] = {name: [] for name in sides}
        for i in range(args.steps + 1):  # the first round warms up and is not kept
            for name in (sides if i % 2 else reversed(sides)):  # alternate who goes first
                start = time.perf_counter()
                states[name], metrics = sides[name][0](states[name], batch, jax.random.key(2))
                jax.block_until_ready(metrics["loss"])
                if i:
                    times[name].append(time.perf_counter() - start)
    ratios = [new / old for new, old in zip(times["working_tree"], times["against"])]
    print(json.dumps({"benchmark": "ab_train_step", "size": args.size, "batch": args.batch, "against": args.against,
                      "step_kwargs": args.step_kwargs, "against_step_kwargs": args.against_step_kwargs,
                      "steps": args.steps,
                      **{f"{name}_median_s": round(statistics.median(t), 4) for name, t in times.items()},
                      **{f"{name}_compile_s": round(sides[name][2], 2) for name in sides},
                      "median_ratio": round(statistics.median(ratios), 3), **run_facts()}))


if __name__ == "__main__":
    main()
