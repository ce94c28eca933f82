"""Sampling time of the causal sampler (KV cache, one token per step) on the local device. Prints one JSON line.

  python benchmarks/causal_sampling.py
  python benchmarks/causal_sampling.py --batch=16 --diffusion-steps=50 --mar-steps=8,16,32,64 --repeats=3

Two measurements at the tiny-cpu sizes (`bench_setup.TINY_CPU`: 8x8 tokens of 16 channels, width 256,
4+4 blocks, DiffLoss 3x256, 10 classes):
  gpt: VQ-GPT codes with CFG (LlamaGen's constant scale) and top-k, as tokens/s and images/s; the
    GPT has the tiny MAR's width, heads and total depth, over a 1024-code vocabulary.
  ar_vs_mar: seconds per image of the causal AR baseline (DiffLoss head, random order, the MAR's
    encoder + decoder depth in one stack) and of MAR at each step count, with the same DiffLoss
    steps, CFG scale and linear schedule.
"""
import argparse
import functools
import json

import jax
import jax.numpy as jnp

from bench_setup import TINY_CPU, build_model, run_facts, time_calls
from marjax.models import ar, gpt, mar
from marjax.sampling import causal, masked

STACK = dict(width=TINY_CPU["encoder_width"], depth=TINY_CPU["encoder_depth"] + TINY_CPU["decoder_depth"],
             num_heads=TINY_CPU["encoder_heads"])
GPT_TINY_CPU = dict(STACK, vocab_size=1024, grid_size=TINY_CPU["latent_size"], num_classes=TINY_CPU["num_classes"])
AR_TINY_CPU = dict(STACK, latent_size=TINY_CPU["latent_size"], latent_channels=TINY_CPU["latent_channels"],
                   num_classes=TINY_CPU["num_classes"], diffloss_depth=TINY_CPU["diffloss_depth"],
                   diffloss_width=TINY_CPU["diffloss_width"], order="random", head="diffloss")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=2.0)
    parser.add_argument("--top-k", type=int, default=100, help="the GPT's top-k")
    parser.add_argument("--diffusion-steps", type=int, default=50)
    parser.add_argument("--mar-steps", default="8,16,32,64", help="MAR's step counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    args = parser.parse_args()

    labels = jnp.arange(args.batch) % TINY_CPU["num_classes"]
    rng = jax.random.key(1)

    def timed(sample) -> dict:
        first, median = time_calls(sample, args.repeats)
        return {"batch_s": round(median, 4), "s_per_image": round(median / args.batch, 5),
                "first_call_incl_compile_s": round(first, 2)}

    gpt_model = gpt.GPT(**GPT_TINY_CPU)
    gpt_params = jax.jit(functools.partial(gpt.init_params, gpt_model))(jax.random.key(0))
    gpt_record = timed(lambda: causal.generate_codes(gpt_model, gpt_params, labels, rng, cfg=args.cfg,
                                                     top_k=args.top_k))
    images_per_s = args.batch / gpt_record["batch_s"]
    gpt_record.update(images_per_s=round(images_per_s, 2), tokens_per_s=round(images_per_s * gpt_model.seq_len, 1))

    ar_model = ar.AR(**AR_TINY_CPU)
    ar_params = jax.jit(functools.partial(ar.init_params, ar_model))(jax.random.key(0))
    ar_record = timed(lambda: causal.generate_ar(ar_model, ar_params, labels, rng, cfg=args.cfg,
                                                 num_diffusion_steps=args.diffusion_steps))
    mar_model = build_model("tiny-cpu", False)
    mar_params = jax.jit(functools.partial(mar.init_params, mar_model))(jax.random.key(0))
    mar_records = {steps: timed(lambda steps=steps: masked.generate(mar_model, mar_params, labels, rng,
                                                                    num_iter=steps, cfg=args.cfg,
                                                                    num_diffusion_steps=args.diffusion_steps))
                   for steps in map(int, args.mar_steps.split(","))}

    record = {"benchmark": "causal_sampling", "batch": args.batch, "cfg": args.cfg,
              "gpt": {"size": GPT_TINY_CPU, "top_k": args.top_k, **gpt_record},
              "ar_vs_mar": {"size": "tiny-cpu", "diffusion_steps": args.diffusion_steps, "cfg_schedule": "linear",
                            "ar": {"steps": ar_model.seq_len, **ar_record},
                            "mar": {str(steps): r for steps, r in mar_records.items()}},
              **run_facts()}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
