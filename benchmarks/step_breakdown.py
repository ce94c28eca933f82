"""Where a MAR train step's time goes: the transformer (encoder + decoder, forward and backward),
the DiffLoss MLP (forward and backward on every copied row) and the rest (masking, diffusion
arithmetic, AdamW, EMA), each timed as its own compiled program on the local device, beside the
analytic FLOP shares (attention products, transformer Linears, DiffLoss MLP). Prints one JSON line.

  python benchmarks/step_breakdown.py --size=tiny-cpu --batch=32
  python benchmarks/step_breakdown.py --size=mar_large --batch=64 --bf16

Parts timed alone miss the overlap XLA finds inside the whole step, so "rest" (whole step minus
the two parts) is an estimate and can come out slightly negative.
"""
import argparse
import json

import jax
import jax.numpy as jnp

from bench_setup import add_train_arguments, build_model, run_facts, time_calls, train_setup
from marjax.models import mar_flops as flops
from marjax.models.masking import max_unmasked
from marjax.models.mar import MAR, init_params


def flop_shares(model: MAR, diffusion_batch_mul: int) -> dict[str, float]:
    """Fractions of the analytic training FLOPs: attention products, transformer Linears, DiffLoss MLP."""
    probs = flops.known_token_probabilities(model.seq_len)
    encoder = sum(p * flops.attention_flops(model.buffer_size + k, model.encoder_width) for k, p in enumerate(probs))
    attention = (model.encoder_depth * encoder
                 + model.decoder_depth * flops.attention_flops(model.buffer_size + model.seq_len, model.decoder_width))
    total = flops.train_flops_per_image(model, diffusion_batch_mul) / 3
    diffloss = model.seq_len * diffusion_batch_mul * flops.diffloss_flops_per_row(
        model.token_dim, model.decoder_width, model.diffloss_width, model.diffloss_depth)
    return {"attention": round(attention / total, 4), "transformer_linear": round((total - attention - diffloss) / total, 4),
            "diffloss_mlp": round(diffloss / total, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(parser)
    args = parser.parse_args()

    model = build_model(args.size, args.bf16)
    b, seq_len, mul = args.batch, model.seq_len, args.diffusion_batch_mul
    keys = jax.random.split(jax.random.key(0), 6)
    params = jax.jit(lambda key: init_params(model, key))(keys[0])
    tokens = jax.random.normal(keys[1], (b, seq_len, model.token_dim))
    labels = jnp.arange(b) % model.num_classes
    known = max_unmasked(seq_len, 0.7)
    mask = jnp.arange(seq_len)[None].repeat(b, 0) >= known  # the encoder's static size, as the step pads
    drop = jnp.zeros((b,), bool)
    rows = b * seq_len * mul
    x = jax.random.normal(keys[2], (rows, model.token_dim))
    t = jax.random.randint(keys[3], (rows,), 0, 1000)
    z = jax.random.normal(keys[4], (rows, model.decoder_width))

    @jax.jit
    def transformer(p):
        def out(p):
            zz = model.apply({"params": p}, tokens, mask, labels, drop, known, deterministic=False,
                             method=MAR.condition, rngs={"dropout": keys[5]})
            return jnp.sum(zz.astype(jnp.float32) ** 2)
        return jax.grad(out)(p)

    @jax.jit
    def diffloss(p, z):
        def out(p, z):
            return jnp.sum(model.apply({"params": p}, x, t, z, method=MAR.denoise) ** 2)
        return jax.grad(out, argnums=(0, 1))(p, z)

    state, step, batch, rng = train_setup(model, b, mul)

    def whole_step():
        nonlocal state
        state, metrics = step(state, batch, rng)
        return metrics["loss"]

    times = {"transformer_fwd_bwd_s": time_calls(lambda: transformer(params), args.steps)[1],
             "diffloss_fwd_bwd_s": time_calls(lambda: diffloss(params, z), args.steps)[1],
             "whole_step_s": time_calls(whole_step, args.steps)[1]}
    times["rest_s"] = times["whole_step_s"] - times["transformer_fwd_bwd_s"] - times["diffloss_fwd_bwd_s"]
    print(json.dumps({"benchmark": "step_breakdown", "size": args.size, "batch": b, "bf16": args.bf16,
                      **{k: round(v, 4) for k, v in times.items()},
                      "share_of_step": {k[:-2]: round(v / times["whole_step_s"], 3) for k, v in times.items()
                                        if k != "whole_step_s"},
                      "analytic_flop_share": flop_shares(model, mul), **run_facts()}))


if __name__ == "__main__":
    main()
