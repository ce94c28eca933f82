"""Sampling time of VAR's next-scale sampler, marjax against the reference's own
`autoregressive_infer_cfg` (FoundationVision/VAR, a checkout the user gives), in one process on the
CPU, the same weights in both. Prints one JSON line.

  python benchmarks/var_sampling.py --reference=/path/to/VAR
  python benchmarks/var_sampling.py --reference=/path/to/VAR --batch=16 --cfg=1.5 --top-k=900 --top-p=0.96 --rounds=7
  python benchmarks/var_sampling.py --reference=/path/to/VAR --host-top-k     # sample.host_top_k=True

Size: the published tokenizer's quantizer (V 4096, Cvae 32, the 256-px scales 1..16, 680 tokens) under
a tiny transformer (depth 2, width 128, 2 heads, 10 classes) at VAR's init. Both
sides are timed to codes and f_hat: the reference's `fhat_to_img` returns f_hat (no decoder on either
side). Rounds alternate which side runs first; each reports both times, and the ratio is the median
of the per-round reference / marjax ratios (> 1: marjax is faster). marjax's first call, which
compiles, and one warm-up call of the reference are not in the rounds.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bench_setup import run_facts
from marjax.models.var import PATCH_NUMS_256, VAR
from marjax.models.var_torch_layout import params_from_torch_state
from marjax.sampling.next_scale import generate_var
from marjax.tokenizers.msvq import MultiScaleQuantizer
from marjax.tokenizers.msvq_torch_layout import params_from_torch_state as quantizer_from_torch_state
from marjax.tokenizers.msvq_vae import VQVAE

SIZE = dict(vocab_size=4096, code_dim=32, patch_nums=PATCH_NUMS_256, depth=2, width=128, num_heads=2, num_classes=10)


def reference_modules(path: str):
    """The reference's models.var and models.quant modules from the checkout at `path`; exits with a
    message when it is not one. Its models/__init__.py is skipped, and huggingface_hub (only for its
    VARHF class) is stubbed when missing."""
    if not os.path.isfile(os.path.join(path, "models", "var.py")):
        sys.exit(f"error: --reference={path} is not a checkout of FoundationVision/VAR (no models/var.py there)")
    sys.path.insert(0, path)
    package = types.ModuleType("models")
    package.__path__ = [os.path.join(path, "models")]
    sys.modules["models"] = package
    if importlib.util.find_spec("huggingface_hub") is None:
        sys.modules["huggingface_hub"] = types.SimpleNamespace(PyTorchModelHubMixin=object)
    import models.quant
    import models.var
    return models.var, models.quant


def build_reference(var_module, quant_module):
    """The reference VAR as build_vae_var makes it (VAR's init, eval, fp32, no flash-attn / xformers),
    its vae proxy returning f_hat instead of images."""
    quantizer = quant_module.VectorQuantizer2(SIZE["vocab_size"], SIZE["code_dim"], using_znorm=False, beta=0.25,
                                              v_patch_nums=SIZE["patch_nums"], quant_resi=0.5, share_quant_resi=4)
    vae = types.SimpleNamespace(Cvae=SIZE["code_dim"], vocab_size=SIZE["vocab_size"], quantize=quantizer,
                                fhat_to_img=lambda f_hat: f_hat)
    model = var_module.VAR(vae, num_classes=SIZE["num_classes"], depth=SIZE["depth"], embed_dim=SIZE["width"],
                           num_heads=SIZE["num_heads"], norm_eps=1e-6, shared_aln=False, attn_l2_norm=True,
                           patch_nums=SIZE["patch_nums"], flash_if_available=False, fused_if_available=False)
    model.init_weights(init_adaln=0.5, init_adaln_gamma=1e-5, init_head=0.02, init_std=-1)
    return model.eval(), quantizer


def marjax_params(model: VAR, reference, quantizer) -> tuple[dict, dict]:
    """The reference's weights as (VAR params, VQVAE params holding only the quantizer's)."""
    state = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    codes = [jnp.zeros((1, p, p), jnp.int32) for p in model.patch_nums]
    shapes = jax.eval_shape(lambda: MultiScaleQuantizer(model.vocab_size, model.code_dim, model.patch_nums).init(
        jax.random.key(0), codes, method="latents_from_codes"))
    quantizer_state = {f"quantize.{k}": v.detach().numpy() for k, v in quantizer.state_dict().items()}
    vae_params = quantizer_from_torch_state(quantizer_state, {"quantizer": nn.unbox(shapes["params"])})
    return params_from_torch_state(state, model), vae_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default=None, help="a checkout of FoundationVision/VAR (required)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cfg", type=float, default=1.5)
    parser.add_argument("--top-k", type=int, default=900)
    parser.add_argument("--top-p", type=float, default=0.96)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--host-top-k", action="store_true", help="marjax's top-k by numpy on the host "
                        "(sample.host_top_k)")
    args = parser.parse_args()
    if args.reference is None:
        sys.exit("error: give --reference=PATH, a checkout of FoundationVision/VAR (its models/var.py)")
    var_module, quant_module = reference_modules(args.reference)
    import torch

    reference, quantizer = build_reference(var_module, quant_module)
    model = VAR(**SIZE)
    vqvae = VQVAE(code_dim=SIZE["code_dim"], codebook_size=SIZE["vocab_size"], patch_nums=SIZE["patch_nums"])
    params, vae_params = marjax_params(model, reference, quantizer)
    labels = np.arange(args.batch) % SIZE["num_classes"]
    torch_labels = torch.from_numpy(labels)

    def run_marjax():
        codes, f_hat = generate_var(model, params, vqvae, vae_params, labels, jax.random.key(0), cfg=args.cfg,
                                    top_k=args.top_k, top_p=args.top_p, host_top_k=args.host_top_k)
        jax.block_until_ready((codes, f_hat))

    def run_reference():
        with torch.inference_mode():
            reference.autoregressive_infer_cfg(args.batch, torch_labels, g_seed=0, cfg=args.cfg, top_k=args.top_k,
                                               top_p=args.top_p)

    def seconds(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    first_marjax, first_reference = seconds(run_marjax), seconds(run_reference)
    rounds = []
    for i in range(args.rounds):
        order = [("marjax", run_marjax), ("reference", run_reference)]
        rounds.append({name: round(seconds(fn), 4) for name, fn in (order if i % 2 == 0 else order[::-1])})
    ratios = [r["reference"] / r["marjax"] for r in rounds]
    record = {"benchmark": "var_sampling", "size": {k: list(v) if isinstance(v, tuple) else v for k, v in SIZE.items()},
              "batch": args.batch, "cfg": args.cfg, "top_k": args.top_k, "top_p": args.top_p,
              "host_top_k": args.host_top_k,
              "marjax_first_call_incl_compile_s": round(first_marjax, 2),
              "reference_first_call_s": round(first_reference, 2), "rounds": rounds,
              "marjax_median_s": round(statistics.median(r["marjax"] for r in rounds), 4),
              "reference_median_s": round(statistics.median(r["reference"] for r in rounds), 4),
              "median_ratio_reference_over_marjax": round(statistics.median(ratios), 3),
              "torch": torch.__version__, "torch_threads": torch.get_num_threads(), **run_facts()}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
