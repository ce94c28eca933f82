"""Start-up times of `python -m marjax.main` with an empty and with a filled compilation cache.
Prints one JSON line.

  python benchmarks/start_times.py
  python benchmarks/start_times.py --reference-code=/path/to/LTH14/mar --rounds=3

Each time is wall-clock seconds from launching the command to the log line that marks the
moment, so Python's imports, restoring the checkpoint, tracing and compiling (or loading from
the cache) are all in it:
  train: the digits default (`configs/digits.py`) to its first step, stopped there with SIGTERM
    (which saves a checkpoint); then the same command again `--rounds` times, each resuming and
    loading its programs from the cache (the train step whole from marjax's store, while the
    state restores). `resume_no_cache` is that resume with `compile_cache.enabled=False`.
  sample: `--mode=sample` of `configs/digits.py:tiny_cpu` (the comparison size of BENCHMARKS.md,
    16 images) to its images on disk, first with an empty cache and then with the filled one
    (the sampler whole from the store);
    `call_s` is the part after the checkpoint is restored (the sampler's first call, its
    compiling or loading included), the quantity the reference's `first_call_s` measures.
With --reference-code, the reference PyTorch MAR's first sampling call at the same size runs in
alternation with the cached marjax sampling, `--rounds` times each.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench_setup import run_facts, run_reference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_STEP = "first step of this run done"
SAMPLING = "sampling "
WROTE = "wrote "


def timed_run(config: str, workdir: str, cache: str, *extra: str, stop_at: str) -> dict[str, float]:
    """Runs marjax.main and returns the seconds from launch to the first line containing each of
    `SAMPLING`, `stop_at` (when seen), and how many programs it loaded and compiled, through JAX's
    cache and through marjax's store; SIGTERM at `stop_at`."""
    command = [sys.executable, "-m", "marjax.main", f"--config={config}", f"--workdir={workdir}",
               f"--config.compile_cache.dir={cache}", *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    seen: dict[str, float] = {}
    log = []
    for line in process.stderr:
        log.append(line)
        for mark in (SAMPLING, stop_at):
            if mark in line and mark not in seen:
                seen[mark] = time.perf_counter() - start
                if mark == stop_at and mark == FIRST_STEP:
                    process.send_signal(signal.SIGTERM)
    if process.wait() != 0 or stop_at not in seen:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{''.join(log[-30:])}")
    text = "".join(log)
    compiled = re.search(r"compilation cache: (\d+) programs loaded, (\d+) compiled", text)
    stored = re.search(r"stored programs: (\d+) loaded \((\d+) preloaded\), (\d+) compiled", text)
    result = {"to_mark_s": round(seen[stop_at], 2)}
    if SAMPLING in seen:
        result["call_s"] = round(seen[stop_at] - seen[SAMPLING], 2)
    if compiled:
        result.update(loaded=int(compiled.group(1)), compiled=int(compiled.group(2)))
    if stored:
        result.update(stored_loaded=int(stored.group(1)), stored_preloaded=int(stored.group(2)),
                      stored_compiled=int(stored.group(3)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-code", help="a checkout of LTH14/mar: time its first sampling call too")
    parser.add_argument("--reference-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of cached sampling vs the reference")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="marjax-start-times-")
    cache, workdir, tiny = (os.path.join(root, name) for name in ("cache", "digits", "tiny"))
    train = {
        "first_run": timed_run("configs/digits.py", workdir, cache, stop_at=FIRST_STEP),
        "resume_cached": [timed_run("configs/digits.py", workdir, cache, stop_at=FIRST_STEP)
                          for _ in range(args.rounds)],
        "resume_no_cache": timed_run("configs/digits.py", workdir, cache, "--config.compile_cache.enabled=False",
                                     stop_at=FIRST_STEP),
    }
    train["resume_cached_median_s"] = statistics.median(run["to_mark_s"] for run in train["resume_cached"])
    timed_run("configs/digits.py:tiny_cpu", tiny, os.path.join(root, "tiny-train-cache"), "--config.train.num_steps=1",
              "--config.train.sample_every_steps=0",
              stop_at="done: ")
    sample = {"first_run": timed_run("configs/digits.py:tiny_cpu", tiny, cache, "--mode=sample", stop_at=WROTE)}
    cached, reference = [], []
    for _ in range(args.rounds):
        cached.append(timed_run("configs/digits.py:tiny_cpu", tiny, cache, "--mode=sample", stop_at=WROTE))
        if args.reference_code:
            reference.append(run_reference(args.reference_python, args.reference_code, "sample",
                                           ["--size=tiny-cpu", "--batch=16", "--num-iter=16", "--diffusion-steps=50",
                                            "--cfg=2.0", "--repeats=1"]))
    sample["cached_runs"] = cached
    sample["cached_median"] = {key: statistics.median(run[key] for run in cached) for key in ("to_mark_s", "call_s")}
    result = {"benchmark": "start_times", **run_facts(), "train_digits_to_first_step": train,
              "sample_tiny_cpu_to_images": sample}
    if reference:
        result["reference_sample_tiny_cpu"] = {
            "first_call_s": [r["first_call_s"] for r in reference],
            "start_to_first_call_end_s": [r["start_to_first_call_end_s"] for r in reference]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
