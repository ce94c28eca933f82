"""Sampling time of MAR (one compiled sampler) on the local device. Prints one JSON line.

  python benchmarks/sample_throughput.py --size=tiny-cpu --batch=16 --num-iter=16 --diffusion-steps=50 --cfg=2.0
  python benchmarks/sample_throughput.py --size=mar_large --batch=256 --num-iter=64 --cfg=3.0 --bf16
  python benchmarks/sample_throughput.py --size=mar_large --batch=256 --num-iter=64 --cfg=3.0 --bf16 \
      --reference-code=/path/to/mar

MFU counts the reference's useful work (`marjax.models.mar_flops.sample_flops_per_image`: each step's known
tokens in the encoder, the predicted tokens in the DiffLoss MLP, doubled with CFG), not the
padding of marjax's static slabs. With `--reference-code`, the reference PyTorch MAR samples the
same batch first, on the same device, in a child process.
"""
import argparse
import json

import jax
import jax.numpy as jnp

from bench_setup import SIZES, build_model, peak_tflops, run_facts, run_reference, time_calls, utilisation
from marjax.models.mar_flops import sample_flops_per_image
from marjax.models.mar import init_params
from marjax.sampling.masked import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--num-iter", type=int, default=16)
    parser.add_argument("--diffusion-steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--cfg-schedule", default="linear")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 params")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not in the table")
    parser.add_argument("--reference-code", default=None, help="a checkout of LTH14/mar to time beside marjax")
    parser.add_argument("--reference-python", default="python", help="the Python with torch (and timm) for it")
    args = parser.parse_args()

    reference = None
    if args.reference_code:
        reference = run_reference(
            args.reference_python, args.reference_code, "sample",
            [f"--size={args.size}", f"--batch={args.batch}", f"--repeats={args.repeats}", f"--num-iter={args.num_iter}",
             f"--diffusion-steps={args.diffusion_steps}", f"--cfg={args.cfg}", f"--cfg-schedule={args.cfg_schedule}",
             f"--temperature={args.temperature}"] + (["--bf16"] if args.bf16 else []))

    model = build_model(args.size, args.bf16)
    params = init_params(model, jax.random.key(0))
    labels = jnp.arange(args.batch) % model.num_classes

    def sample():
        return generate(model, params, labels, jax.random.key(1), num_iter=args.num_iter, cfg=args.cfg,
                        cfg_schedule=args.cfg_schedule, temperature=args.temperature,
                        num_diffusion_steps=args.diffusion_steps)

    first, median = time_calls(sample, args.repeats)
    flops = sample_flops_per_image(model, args.num_iter, args.diffusion_steps, args.cfg)
    record = {"benchmark": "sample", "size": args.size, "batch": args.batch, "bf16": args.bf16,
              "num_iter": args.num_iter, "diffusion_steps": args.diffusion_steps, "cfg": args.cfg,
              "cfg_schedule": args.cfg_schedule, "batch_s": round(median, 4),
              "s_per_image": round(median / args.batch, 5), "first_call_incl_compile_s": round(first, 2),
              **utilisation(flops, args.batch / median, peak_tflops(args.bf16, args.peak_tflops)), **run_facts()}
    if reference is not None:
        record["reference"] = reference
        record["speedup_vs_reference"] = round(reference["batch_s"] / median, 3)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
