"""Times the reference PyTorch MAR (a checkout of LTH14/mar the user gives) at a marjax benchmark
size, on the GPU if torch sees one, else the CPU. Prints one JSON line. The throughput scripts
run this in a child process with `--reference-code=PATH`, so PyTorch and JAX never share a
process (or a GPU memory pool); it can also be run alone:

  python benchmarks/reference_mar.py --code=/path/to/mar train --size=mar_large --batch=64 --bf16
  python benchmarks/reference_mar.py --code=/path/to/mar sample --size=mar_large --batch=256 --num-iter=64 --cfg=3.0

Train step as the reference trains (engine_mar.py): forward, backward, grad-norm clip 3.0,
AdamW (betas 0.9, 0.95, weight decay 0.02), the EMA update of every parameter. bf16 runs under
`torch.autocast(dtype=torch.bfloat16)` (the reference's own autocast is fp16 with a loss scaler);
fp32 runs use torch's defaults (TF32 matmuls off).
"""
import argparse
import json
import os
import statistics
import sys
import time
from functools import partial

STARTED = time.perf_counter()  # this process's start, for the start-to-first-call time

def _size(width: int, depth: int, heads: int, diffloss_d: int, diffloss_w: int, **data) -> dict:
    return dict(encoder_embed_dim=width, encoder_depth=depth, encoder_num_heads=heads, decoder_embed_dim=width,
                decoder_depth=depth, decoder_num_heads=heads, diffloss_d=diffloss_d, diffloss_w=diffloss_w, **data)


IMAGENET = dict(img_size=256, vae_stride=16, class_num=1000, buffer_size=64)
# The reference's models at marjax's benchmark sizes: tiny-cpu as in benchmarks/bench_setup.py, the
# published sizes (models/mar.py's mar_base/large/huge) with the paper's DiffLoss MLPs
# (main_mar.py's --diffloss_d / --diffloss_w).
SIZES = {
    "tiny-cpu": _size(256, 4, 4, 3, 256, img_size=32, vae_stride=4, class_num=10, buffer_size=16),
    "mar_base": _size(768, 12, 12, 6, 1024, **IMAGENET),
    "mar_large": _size(1024, 16, 16, 8, 1280, **IMAGENET),
    "mar_huge": _size(1280, 20, 16, 12, 1536, **IMAGENET),
}


def build(code: str, size: str, diffusion_steps: int, device, depth: int | None = None):
    """The reference MAR module at `size` (with `depth` encoder and decoder blocks if given) on
    `device`; exits with a message if `code` is not a checkout."""
    if not os.path.isfile(os.path.join(code, "models", "mar.py")):
        sys.exit(f"error: {code} is not a checkout of LTH14/mar (no models/mar.py there)")
    sys.path.insert(0, code)
    import torch
    from models import mar

    if device.type == "cpu":  # the reference moves tensors with .cuda(); keep them where they are
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    kwargs = dict(SIZES[size])
    if depth is not None:
        kwargs.update(encoder_depth=depth, decoder_depth=depth)
    model = mar.MAR(norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), mlp_ratio=4, patch_size=1, vae_embed_dim=16,
                    diffusion_batch_mul=4, num_sampling_steps=str(diffusion_steps), **kwargs)
    return model.to(device)


def timed(fn, device, repeats: int) -> tuple[float, float, float]:
    """(first call, median of `repeats` later calls, process start to the first call's end) in
    seconds, synchronised with the device."""
    import torch

    def once() -> float:
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first = once()
    first_end = time.perf_counter() - STARTED
    return first, statistics.median(once() for _ in range(repeats)), first_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", required=True, help="a checkout of LTH14/mar")
    parser.add_argument("what", choices=["train", "sample"])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny-cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--depth", type=int, default=None, help="encoder and decoder blocks (default: the size's)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-iter", type=int, default=16)
    parser.add_argument("--diffusion-steps", type=int, default=50)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--cfg-schedule", default="linear")
    parser.add_argument("--temperature", type=float, default=1.0)
    args = parser.parse_args()

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build(args.code, args.size, args.diffusion_steps, device, args.depth)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    side = model.seq_h
    labels = torch.arange(args.batch, device=device) % model.num_classes

    if args.what == "train":
        model.train()
        latents = torch.randn(args.batch, model.vae_embed_dim, side, side, device=device)
        params = list(model.parameters())
        ema = [p.detach().clone() for p in params]
        optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.02)

        def step():
            with autocast:
                loss = model(latents, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 3.0)
            optimizer.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - 0.9999)

        first, median, first_end = timed(step, device, args.repeats)
        result = {"step_s": round(median, 4), "img_per_s": round(args.batch / median, 2)}
    else:
        model.eval()

        def sample():
            with torch.no_grad(), autocast:
                model.sample_tokens(args.batch, num_iter=args.num_iter, cfg=args.cfg, cfg_schedule=args.cfg_schedule,
                                    labels=labels, temperature=args.temperature)

        first, median, first_end = timed(sample, device, args.repeats)
        result = {"batch_s": round(median, 4), "s_per_image": round(median / args.batch, 5)}
    print(json.dumps({"implementation": "reference-pytorch", "what": args.what, "size": args.size,
                      "batch": args.batch, "bf16": args.bf16, **result, "first_call_s": round(first, 3),
                      "start_to_first_call_end_s": round(first_end, 3),
                      "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                      "device_peak_mib": (round(torch.cuda.max_memory_allocated() / 2**20, 1)
                                          if device.type == "cuda" else None),
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
