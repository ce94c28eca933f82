"""Sampling time of the VQ-GPT, marjax's `generate_codes` against the reference's own `generate`
(FoundationVision/LlamaGen `autoregressive/models/generate.py`, a checkout the user gives), in one
process on the CPU, the same weights on both sides. Prints one JSON line.

  python benchmarks/gpt_sampling.py --reference=/path/to/LlamaGen
  python benchmarks/gpt_sampling.py --reference=/path/to/LlamaGen --check-greedy --rounds=7

Size: `causal_sampling.GPT_TINY_CPU` (width 256, 8 layers, 4 heads, 1024 codes, 8x8 grid, 10 classes;
LlamaGen's other `ModelArgs` defaults: multiple_of 256, class dropout 0.1 for the null class). The
reference model is built at LlamaGen's init, then noise is added to every param (the zero output
weight included) so that sampling is far from uniform; marjax takes its state dict through
`gpt_torch_layout`. Both sample with LlamaGen's constant CFG scale, top-k and temperature, batch 16
(32 rows with the unconditional half) by default, to codes only (no VQ decoder on either side).

Timing: the first call of each side is reported apart (marjax's includes compiling); then each round
times marjax (blocked on) and then the reference (torch.no_grad, torch.set_num_threads), the sides
alternating. Reported: per-round times, each side's median and the median of the per-round ratios
reference / marjax (> 1: marjax is faster). The first calls' codes are checked to be valid codes of
the same shape (they are not equal: the RNGs differ). --check-greedy then samples the same labels
with top_k=1 on both sides and asserts equal codes (the same weights give the same argmax).

The floor: the same rounds also time the sampler's matrix products alone, `matmul_chain`: each
decode step's Linear layers (every layer's qkv, proj, w1, w3 and w2, then the output head) at the
sampler's rows, chained by the residual adds, in one compiled loop over the same number of steps.
Reported with the ratio's budget: to be k times faster than the reference, a batch must take
reference_median / k seconds, and the products alone already take `matmuls_alone_median_s`.

On a CPU shared with other work, PyTorch's OpenMP threads spin-wait at every barrier and the
reference's times can grow several-fold and vary from round to round; OMP_WAIT_POLICY=PASSIVE in the
environment (set before the run; recorded in the JSON with the 1-minute load average) avoids that.
"""
import argparse
import json
import os
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from bench_setup import run_facts
from causal_sampling import GPT_TINY_CPU
from marjax.models.gpt import GPT
from marjax.models.gpt_torch_layout import params_from_torch_state
from marjax.sampling.causal import decode_chunks, generate_codes

REFERENCE_FILES = ("autoregressive/models/gpt.py", "autoregressive/models/generate.py", "utils/drop_path.py")


def reference_modules(path: str):
    """The reference's gpt and generate modules from the checkout at `path`; exits with a message
    naming the missing path or file when it is not one."""
    if not os.path.isdir(path):
        sys.exit(f"error: --reference={path}: no such directory (give a checkout of FoundationVision/LlamaGen)")
    for name in REFERENCE_FILES:
        if not os.path.isfile(os.path.join(path, name)):
            sys.exit(f"error: --reference={path} is not a checkout of FoundationVision/LlamaGen "
                     f"(no {os.path.join(path, name)})")
    sys.path.insert(0, os.path.abspath(path))
    import autoregressive.models.generate
    import autoregressive.models.gpt
    return autoregressive.models.gpt, autoregressive.models.generate


def build_reference(gpt_module, torch, seed: int):
    """The reference c2i GPT at GPT_TINY_CPU (LlamaGen's init), every param then moved by noise:
    Linear weights + N(0, 1 / fan_in) (the zero output weight too), embeddings + N(0, 1), RMSNorm
    weights + N(0, 0.2). In eval mode (no dropout), fp32."""
    torch.manual_seed(seed)
    config = gpt_module.ModelArgs(dim=GPT_TINY_CPU["width"], n_layer=GPT_TINY_CPU["depth"],
                                  n_head=GPT_TINY_CPU["num_heads"], vocab_size=GPT_TINY_CPU["vocab_size"],
                                  block_size=GPT_TINY_CPU["grid_size"] ** 2, num_classes=GPT_TINY_CPU["num_classes"],
                                  cls_token_num=1, model_type="c2i")
    model = gpt_module.Transformer(config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                std = 0.2
            elif "embedding" in name:
                std = 1.0
            else:
                std = p.shape[1] ** -0.5
            p.add_(std * torch.randn(p.shape, generator=generator))
    return model.eval(), config


def marjax_model(config) -> GPT:
    return GPT(vocab_size=config.vocab_size, grid_size=GPT_TINY_CPU["grid_size"], num_classes=config.num_classes,
               width=config.dim, depth=config.n_layer, num_heads=config.n_head, num_kv_heads=config.n_kv_head,
               multiple_of=config.multiple_of, ffn_dim_multiplier=config.ffn_dim_multiplier,
               rope_base=float(config.rope_base), norm_eps=config.norm_eps, class_dropout=config.class_dropout_prob)


def matmul_chain(params: dict, rows: int, steps: int):
    """A jitted function of no arguments: `steps` iterations of the GPT's decode-step products on a
    (rows, width) activation, the params' kernels in the order a step applies them."""
    layers = [params[name] for name in sorted((k for k in params if k.startswith("layers_")),
                                              key=lambda k: int(k.split("_")[1]))]
    head = params["head"]["output"]["kernel"]
    width = head.shape[0]

    def step(_, x):
        h = x
        for layer in layers:
            attention, ffn = layer["attention"], layer["feed_forward"]
            h = h + (h @ attention["qkv"]["kernel"])[:, :width] @ attention["proj"]["kernel"]
            h = h + (jax.nn.silu(h @ ffn["w1"]["kernel"]) * (h @ ffn["w3"]["kernel"])) @ ffn["w2"]["kernel"]
        return x + 1e-3 * (h @ head)[:, :width]

    start = jnp.ones((rows, width), head.dtype)
    return jax.jit(lambda: jax.lax.fori_loop(0, steps, step, start))


def code_facts(codes: np.ndarray, vocab_size: int) -> dict:
    """Shape, dtype, whether every code is in [0, vocab_size), and how many distinct codes appear."""
    return {"shape": list(codes.shape), "dtype": str(codes.dtype),
            "in_range": bool(((codes >= 0) & (codes < vocab_size)).all()), "distinct": int(np.unique(codes).size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=None, help="a checkout of FoundationVision/LlamaGen (required)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=2.0, help="constant guidance scale (LlamaGen's)")
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-chunks", type=int, default=None,
                        help="marjax's KV caches in this many chunks (default: the sampler's own choice)")
    parser.add_argument("--also-cache-chunks", type=int, default=None,
                        help="also time marjax with its caches in this many chunks in every round, and check its codes")
    parser.add_argument("--check-greedy", action="store_true",
                        help="after the rounds, sample the same labels with top_k=1 on both sides and assert equal codes")
    args = parser.parse_args()
    if args.reference is None:
        sys.exit("error: give --reference=PATH, a checkout of FoundationVision/LlamaGen "
                 "(its autoregressive/models/gpt.py and generate.py)")
    if args.cfg <= 1.0:
        sys.exit("error: --cfg must be > 1 (the reference guides only when cfg_scale > 1.0)")
    jax.config.update("jax_platforms", "cpu")  # both sides on the CPU
    load_at_start = round(os.getloadavg()[0], 2)
    gpt_module, generate_module = reference_modules(args.reference)
    import torch

    # The reference's decode loop enters torch.backends.cuda.sdp_kernel, deprecated in recent torch.
    warnings.filterwarnings("ignore", message=r".*sdp_kernel.*", category=FutureWarning)
    torch.set_num_threads(args.torch_threads)
    reference, config = build_reference(gpt_module, torch, args.seed)
    model = marjax_model(config)
    params = params_from_torch_state({k: v.detach().numpy() for k, v in reference.state_dict().items()}, model)
    labels = np.arange(args.batch) % config.num_classes
    torch_labels = torch.from_numpy(labels)
    rng = jax.random.key(args.seed)

    def run_marjax(top_k: int, cache_chunks: int | None = args.cache_chunks) -> np.ndarray:
        codes = generate_codes(model, params, labels, rng, cfg=args.cfg, top_k=top_k, temperature=args.temperature,
                               cache_chunks=cache_chunks)
        return np.asarray(jax.block_until_ready(codes))

    def run_other_chunks(top_k: int) -> np.ndarray:
        return run_marjax(top_k, args.also_cache_chunks)

    def run_reference(top_k: int) -> np.ndarray:
        with torch.no_grad():
            codes = generate_module.generate(reference, torch_labels, model.seq_len, cfg_scale=args.cfg,
                                             cfg_interval=-1, temperature=args.temperature, top_k=top_k, top_p=1.0,
                                             sample_logits=True)
        return codes.numpy()

    matmuls = matmul_chain(params, 2 * args.batch, model.seq_len - 1)
    jax.block_until_ready(matmuls())

    def timed(fn) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = fn(args.top_k)
        return time.perf_counter() - start, out

    torch.manual_seed(args.seed)
    first_marjax, marjax_codes = timed(run_marjax)
    first_reference, reference_codes = timed(run_reference)
    codes = {"marjax": code_facts(marjax_codes, config.vocab_size),
             "reference": code_facts(reference_codes, config.vocab_size)}
    codes["valid_same_shape"] = (marjax_codes.shape == reference_codes.shape == (args.batch, model.seq_len)
                                 and codes["marjax"]["in_range"] and codes["reference"]["in_range"])
    codes["fraction_equal"] = round(float((marjax_codes == reference_codes).mean()), 4)
    if not codes["valid_same_shape"]:
        sys.exit(f"error: invalid codes: {json.dumps(codes)}")
    other_chunks = None
    if args.also_cache_chunks is not None:
        first_other, other_codes = timed(run_other_chunks)
        other_chunks = {"cache_chunks": args.also_cache_chunks, "first_call_incl_compile_s": round(first_other, 2),
                        "same_codes": bool((other_codes == marjax_codes).all())}
        assert other_chunks["same_codes"], f"the codes depend on the cache chunks: {other_chunks}"

    rounds = []
    for _ in range(args.rounds):
        marjax_s, _ = timed(run_marjax)
        reference_s, _ = timed(run_reference)
        matmuls_s, _ = timed(lambda _: jax.block_until_ready(matmuls()))
        rounds.append({"marjax": round(marjax_s, 4), "reference": round(reference_s, 4),
                       "matmuls_alone": round(matmuls_s, 4)})
        if other_chunks is not None:
            rounds[-1]["marjax_other_chunks"] = round(timed(run_other_chunks)[0], 4)
    ratios = [r["reference"] / r["marjax"] for r in rounds]

    greedy = None
    if args.check_greedy:
        greedy_marjax, greedy_reference = run_marjax(1), run_reference(1)
        equal = greedy_marjax == greedy_reference
        greedy = {"top_k": 1, "equal": bool(equal.all()), "fraction_equal": round(float(equal.mean()), 4),
                  "distinct": int(np.unique(greedy_marjax).size)}
        assert greedy["equal"], f"greedy codes differ between marjax and the reference: {greedy}"

    marjax_median = statistics.median(r["marjax"] for r in rounds)
    reference_median = statistics.median(r["reference"] for r in rounds)
    record = {"benchmark": "gpt_sampling", "size": GPT_TINY_CPU, "seq_len": model.seq_len, "batch": args.batch,
              "cfg": args.cfg, "cfg_schedule": "constant", "top_k": args.top_k, "temperature": args.temperature,
              "marjax_first_call_incl_compile_s": round(first_marjax, 2),
              "reference_first_call_s": round(first_reference, 2), "rounds": rounds,
              "marjax_median_s": round(marjax_median, 4),
              "reference_median_s": round(reference_median, 4),
              "median_ratio_reference_over_marjax": round(statistics.median(ratios), 3),
              "matmuls_alone_median_s": round(statistics.median(r["matmuls_alone"] for r in rounds), 4),
              "budget_for_3x_s": round(reference_median / 3, 4),
              "cache_chunks": args.cache_chunks or decode_chunks(1 + model.seq_len), "other_chunks": other_chunks and {
                  **other_chunks, "median_s": statistics.median(r["marjax_other_chunks"] for r in rounds),
                  "median_ratio_over_marjax": round(statistics.median(
                      r["marjax_other_chunks"] / r["marjax"] for r in rounds), 3)},
              "marjax_images_per_s": round(args.batch / marjax_median, 2),
              "codes": codes, "greedy_check": greedy,
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_avg_1min_at_start": load_at_start,
              **run_facts()}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
