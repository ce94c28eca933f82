"""Train-step time, images/s, MFU, compile time and compiled temporaries of MAR on the local
device. Prints one JSON line.

  python benchmarks/train_throughput.py --size=tiny-cpu --batch=32
  python benchmarks/train_throughput.py --size=mar_large --batch=64 --bf16
  python benchmarks/train_throughput.py --size=mar_base --depth=4 --batch=8 --remat=dots --scan-layers
  python benchmarks/train_throughput.py --size=mar_large --batch=64 --bf16 --reference-code=/path/to/mar

MFU = analytic matmul FLOPs per image (`marjax.models.mar_flops`, the reference's useful work, 3 x forward)
x images/s / the device's peak (`bench_setup.PEAK_TFLOPS`; `--peak-tflops` on other devices).
`temp_mib` and `arguments_mib` are the compiled step's plan (what `--mode=compile` prints);
`device_peak_mib` is the device allocator's peak over the whole run (None where the device
does not report it, as on CPU). `xla_gflop_per_image` is XLA's own count of the compiled step
(padding and elementwise work included; with `--mask-buckets` > 1, XLA's figure for the switch between the buckets' branches,
not the expectation over mask counts). With `--reference-code`, the reference PyTorch MAR is timed first at the same size and
batch on the same device, in a child process.
"""
import argparse
import json
import time

from bench_setup import (add_train_arguments, build_model, device_peak_mib, peak_tflops, run_facts, run_reference,
                         time_calls, train_setup, utilisation)
from marjax.models.mar_flops import train_flops_per_image
from marjax.blocks.block_stack import REMAT_POLICIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    parser.add_argument("--mask-buckets", type=int, default=3,
                        help="train.mask_buckets: 3 as in the ImageNet configs, 1 for one padded shape")
    parser.add_argument("--depth", type=int, default=None, help="encoder and decoder blocks (default: the size's)")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="none")
    parser.add_argument("--scan-layers", action="store_true", help="each block group as one nn.scan")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, if not in the table")
    parser.add_argument("--reference-code", default=None, help="a checkout of LTH14/mar to time beside marjax")
    parser.add_argument("--reference-python", default="python", help="the Python with torch (and timm) for it")
    args = parser.parse_args()

    reference = None
    if args.reference_code:
        reference = run_reference(args.reference_python, args.reference_code, "train",
                                  [f"--size={args.size}", f"--batch={args.batch}", f"--repeats={args.steps}"]
                                  + ([] if args.depth is None else [f"--depth={args.depth}"])
                                  + (["--bf16"] if args.bf16 else []))

    depth = {} if args.depth is None else {"encoder_depth": args.depth, "decoder_depth": args.depth}
    model = build_model(args.size, args.bf16, remat=args.remat, scan_layers=args.scan_layers, **depth)
    state, jitted, batch, rng = train_setup(model, args.batch, args.diffusion_batch_mul, args.mask_buckets)
    start = time.perf_counter()
    step = jitted.lower(state, batch, rng).compile()
    compile_s = time.perf_counter() - start
    xla_flops = step.cost_analysis().get("flops")
    plan = step.memory_analysis()

    def one_step():
        nonlocal state
        state, metrics = step(state, batch, rng)
        return metrics["loss"]

    first, median = time_calls(one_step, args.steps)
    img_per_s = args.batch / median
    flops = train_flops_per_image(model, args.diffusion_batch_mul)
    record = {"benchmark": "train_step", "size": args.size, "batch": args.batch, "bf16": args.bf16,
              "diffusion_batch_mul": args.diffusion_batch_mul, "mask_buckets": args.mask_buckets,
              "encoder_depth": model.encoder_depth,
              "decoder_depth": model.decoder_depth, "remat": args.remat, "scan_layers": args.scan_layers,
              "step_s": round(median, 4),
              "img_per_s": round(img_per_s, 2), "compile_s": round(compile_s, 2), "first_step_s": round(first, 3),
              "temp_mib": round(plan.temp_size_in_bytes / 2**20, 1),
              "arguments_mib": round(plan.argument_size_in_bytes / 2**20, 1),
              "device_peak_mib": device_peak_mib(),
              **utilisation(flops, img_per_s, peak_tflops(args.bf16, args.peak_tflops)),
              "xla_gflop_per_image": None if xla_flops is None else round(xla_flops / args.batch / 1e9, 2),
              **run_facts()}
    if reference is not None:
        record["reference"] = reference
        record["speedup_vs_reference"] = round(reference["step_s"] / median, 3)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
