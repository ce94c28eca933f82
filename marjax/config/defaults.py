"""Every field a marjax run reads, with its default; each `configs/*.py` starts from here.

One shared key set means a misspelt override fails the same way for every config (see
`marjax.config.checks`), and two runs' configs can be compared field by field. Sizes of the
model's token grid are not fields: they follow from `data.image_size`, the tokenizer's stride
and `model.patch_size`.
"""
import ml_collections
from ml_collections import config_dict

# ImageNet-1k train split, for epoch <-> step conversions in the published recipe.
IMAGENET_TRAIN_IMAGES = 1_281_167


def base_config(task: str = "mar") -> ml_collections.ConfigDict:
    """The defaults of a `task`'s run: the shared sections and that family's `model` section
    (`MODEL_SECTIONS`; MAR's for "mar" and "tokenizer"). For MAR: a MAR-L-sized transformer on
    ImageNet-256 KL-16 latents, reference recipe."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = task                     # a key of marjax.tasks.registry.TASKS: "mar" | "ar" | "gpt" | "var" | "tokenizer"
    # A run's or a converted checkpoint's directory: a new run starts from its EMA params (fine-tuning;
    # marjax.tasks.init_from: other class counts and token grids are adapted). Ignored on resume.
    c.init_from = ""

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"            # "tfds" | "image_folder" | "digits" | "cached_latents" | "cached_codes"
    c.data.tfds_name = "imagenet2012"
    c.data.tfds_data_dir = config_dict.placeholder(str)  # None: TFDS's default (~/tensorflow_datasets)
    c.data.split = "train"
    c.data.path = ""                  # image_folder: class subfolders; cached_latents, cached_codes: the cache
    c.data.skip_bad_images = False    # image_folder: skip (and count) unreadable files instead of stopping
    c.data.image_size = 256
    c.data.channels = 3
    c.data.num_classes = 1000     # 0: an unconditional model (no class table, no label drop, no guidance)
    c.data.random_flip = True         # mirror at random; a cache: draw its flip (latents) or one of its views (codes)
    c.data.worker_count = 0           # grain worker processes (0: decode in the main process)
    c.data.prefetch_buffer_size = 2

    # What the model's tokens are, and (task="tokenizer") the autoencoder a tokenizer run trains.
    c.tokenizer = ml_collections.ConfigDict()
    # "pixels" (pixel-patch tokens) | "kl" (continuous latents) | "vq" (codes) | "msvq" (VAR's codes per scale)
    c.tokenizer.kind = "kl"
    # kl/vq weights: a directory written by `python -m marjax.convert --kind=kl16`, or the workdir of a
    # tokenizer run (task="tokenizer"; the EMA params of its latest checkpoint)
    c.tokenizer.checkpoint = ""
    c.tokenizer.scale = 0.2325        # kl: latents are multiplied by this before the model sees them
    # Architecture (defaults: MAR's KL-16, 16x16 pixels per latent, 16 channels).
    c.tokenizer.ch = 128
    c.tokenizer.ch_mult = (1, 1, 2, 2, 4)
    c.tokenizer.num_res_blocks = 2
    c.tokenizer.attn_resolutions = (16,)
    c.tokenizer.resolution = 256
    c.tokenizer.embed_dim = 16        # kl: latent channels
    c.tokenizer.z_channels = 256      # vq: encoder output width
    c.tokenizer.codebook_size = 16384
    c.tokenizer.code_dim = 8
    c.tokenizer.l2_normalize = True
    c.tokenizer.decoder_attn_levels = ()  # vq: up-path levels with attention (LlamaGen: the lowest, len(ch_mult) - 1)
    # msvq (VAR's multi-scale residual VQ; codebook_size x code_dim codes on ch/ch_mult/num_res_blocks):
    c.tokenizer.patch_nums = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # token-map side per scale, the last = image / stride
    c.tokenizer.num_phis = 4          # shared Phi convs (VAR's share_quant_resi)
    c.tokenizer.phi_ratio = 0.5       # Phi's residual mix (VAR's quant_resi)
    # Training losses of a task="tokenizer" run.
    c.tokenizer.reconstruction = "l1"  # "l1" | "l2"
    c.tokenizer.kl_weight = 1e-6
    c.tokenizer.codebook_weight = 1.0
    c.tokenizer.disc_weight = 0.5
    c.tokenizer.disc_start = 50_001
    c.tokenizer.disc_ndf = 64
    c.tokenizer.disc_layers = 3
    c.tokenizer.perceptual_weight = 0.0  # LPIPS weight; > 0 without the two files below: a warning, no LPIPS
    c.tokenizer.lpips_vgg16 = ""      # torchvision's VGG-16 weights (vgg16-397923af.pth)
    c.tokenizer.lpips_lin = ""        # LPIPS linear layers (vgg.pth of the lpips package)
    c.tokenizer.disc_adaptive_weight = True  # False: the adversarial weight is disc_weight alone (LlamaGen's VQ recipe)
    # msvq: every this many steps, codes counted below dead_code_threshold x a uniform share of a step's
    # positions are re-initialised from the batch's residuals (0: never; VAR has no such step)
    c.tokenizer.dead_code_every = 0
    c.tokenizer.dead_code_threshold = 0.03

    c.model = MODEL_SECTIONS["mar" if task == "tokenizer" else task]()

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 2048
    c.train.num_epochs = 400.0
    c.train.num_steps = config_dict.placeholder(int)  # set: overrides num_epochs
    c.train.warmup_epochs = 100.0
    c.train.base_lr = 1e-4            # lr = base_lr * global_batch_size / 256, as the reference
    # "constant" | "cosine" (to min_lr) | "lin0" (VAR: warmup from 0.005 x peak, flat 5% of the rest, linear to min_lr)
    c.train.lr_schedule = "constant"
    c.train.min_lr = 0.0
    c.train.weight_decay = 0.02
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.grad_clip = 3.0
    c.train.ema_rate = 0.9999
    c.train.ema_warmup = False          # True: decay min(ema_rate, (1 + step) / (10 + step)), for short runs
    c.train.mask_ratio_min = 0.7
    c.train.label_drop_prob = 0.1       # labels replaced by the null class (for CFG); GPT and VAR: their class dropout
    c.train.label_smoothing = 0.0       # cross-entropy heads (softmax AR, GPT, VAR)
    c.train.diffusion_batch_mul = 4
    # Static shapes for the mask count: 1 pads the encoder to the most known tokens; n > 1 cuts
    # the count's range into n buckets, each compiled with fitted encoder slots and DiffLoss
    # positions (`masking.mask_count_buckets`), the step running the one that fits. Same loss;
    # 3 buckets do 8% fewer matmul FLOPs than 1 and compile about 2.3x longer.
    c.train.mask_buckets = 1
    c.train.log_every_steps = 100
    c.train.checkpoint_every_steps = 5000
    c.train.keep_checkpoints = 3
    c.train.sample_every_steps = 20000  # 0: no sample grids during training
    c.train.eval_every_steps = 0        # > 0: every this many steps, eval_num_images samples scored as --mode=eval
    c.train.eval_num_images = 1000      #   (the eval section's network and reference) into TensorBoard's train_eval/*
    c.train.num_grid_samples = 16

    c.sample = ml_collections.ConfigDict()
    c.sample.num_images = 64
    c.sample.classes = ""             # "" : balanced over all classes; else e.g. "207,360,387"
    c.sample.batch_size = 64
    c.sample.num_iter = 64
    # The guidance scale, 1.0 = none; task "var" reads VAR's own cfg (t = cfg k / (K - 1) at scale k), 0.0 = none.
    c.sample.cfg = 0.0 if task == "var" else 1.0
    c.sample.cfg_schedule = "linear"  # "linear" | "constant"
    c.sample.temperature = 1.0
    c.sample.num_diffusion_steps = "100"  # DiffLoss respacing as the reference: "100", "ddim50", "10,15,20"
    c.sample.clip_denoised = False    # clip the diffusion's x_0 predictions to [-clip_range, clip_range] (the
    c.sample.clip_range = 1.0         # reference: never); pixels [-1, 1], briefly trained latent models ~5 (README)
    c.sample.use_ema = True
    c.sample.choice = "order"         # MAR's softmax head: keep tokens by the random "order" or by "confidence" (MaskGIT)
    c.sample.choice_temperature = 4.5  # "confidence": the Gumbel noise's scale at the first step (MaskGIT's)
    c.sample.top_k = 0                # softmax heads (AR, GPT, VAR): 0 = off
    c.sample.top_p = 1.0              # softmax heads: 1.0 = off
    c.sample.cfg_interval = -1        # GPT (LlamaGen's): guide tokens up to this index only; -1 = every token
    c.sample.more_smooth = False      # VAR: Gumbel-softmax smoothing of the f_hat of sampled scales (visual only)
    c.sample.host_top_k = False       # VAR on a one-device CPU: top-k by numpy on the host (faster; the sampler
                                      # is then compiled every run: JAX does not cache programs with callbacks)
    c.sample.seed = 0
    c.sample.step = config_dict.placeholder(int)  # None: the latest checkpoint

    # `--mode=edit` (marjax.edit): in-painting, out-painting and class-conditional editing of one image.
    c.edit = ml_collections.ConfigDict()
    c.edit.image = ""        # the image to edit, center-cropped and resized to data.image_size
    c.edit.box = ""          # "x0,y0,x1,y1": the pixels to regenerate on that grid (x1, y1 excluded); or
    c.edit.mask = ""         # an image whose nonzero pixels are regenerated (cropped and resized as edit.image)
    c.edit.outpaint = False  # regenerate outside the box or mask instead (out-painting)
    c.edit.label = -1        # the class of the results (required)
    c.edit.num_samples = 4   # results, in one batch

    # `--mode=eval` (marjax.evaluate): samples with the `sample` section's sampler, checkpoint
    # (sample.step) and params (sample.use_ema), scored by a feature network against a reference.
    c.eval = ml_collections.ConfigDict()
    c.eval.num_images = 50_000        # balanced over the classes: 50 per class for ImageNet's 1000
    c.eval.batch_size = 256           # images generated per step, rounded up to a multiple of the device count
    c.eval.feature_network = "inception"  # "inception" (FID's Inception-v3) | "digits" (trained in-process)
    c.eval.inception_weights = ""     # path of pt_inception-2015-12-05-6726825d.pth (pytorch-fid) or torch-fidelity's file
    c.eval.reference = ""             # ADM-style .npz (mu/sigma and/or arr_0 images); "": the run's data source
    c.eval.num_reference_images = 50_000  # records (evenly spaced) of the data source when eval.reference is ""
    c.eval.precision_recall = True    # needs reference images (arr_0 in the .npz, or the data source)
    c.eval.save_png = False           # also write every sample to <workdir>/eval_step_<N>/

    # JAX's persistent compilation cache (marjax.compile_cache): a rerun loads what an earlier run compiled;
    # with store_programs, marjax.stored_programs skips even the tracing of the train step and sampler.
    c.compile_cache = ml_collections.ConfigDict()
    c.compile_cache.enabled = True
    c.compile_cache.dir = ""          # "": $JAX_COMPILATION_CACHE_DIR, else ~/.cache/marjax/jax; on pods a shared gs:// path
    c.compile_cache.store_programs = True  # the command line also stores its train step and sampler whole

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                  # -1: all devices not used by the other axes
    c.mesh.fsdp = 1                   # > 1: params, EMA and optimizer state split over this many devices
    c.mesh.tensor = 1                 # > 1: MLP hidden and attention-head dims split (see rules)
    c.mesh.fsdp_min_size = 2**20      # params with fewer elements stay replicated
    # Logical param axis -> mesh axis, in priority order (marjax.parallel.sharding): tensor parallelism on
    # the MLP hidden and attention-head dims when mesh.tensor > 1, FSDP on the first divisible one.
    c.mesh.rules = (("mlp", "tensor"), ("heads", "tensor"),
                    ("embed", "fsdp"), ("mlp", "fsdp"), ("qkv", "fsdp"), ("heads", "fsdp"), ("classes", "fsdp"),
                    ("conv_out", "fsdp"), ("conv_in", "fsdp"), ("codes", "fsdp"))
    return c


def mar_model() -> ml_collections.ConfigDict:
    """MAR's `model` section (`marjax.models.mar.MAR`): MAR-L's sizes."""
    m = ml_collections.ConfigDict()
    m.patch_size = 1
    m.encoder_width = 1024
    m.encoder_depth = 16
    m.encoder_heads = 16
    m.decoder_width = 1024
    m.decoder_depth = 16
    m.decoder_heads = 16
    m.mlp_ratio = 4.0
    m.buffer_size = 64
    m.attn_dropout = 0.1
    m.proj_dropout = 0.1
    m.diffloss_depth = 3
    m.diffloss_width = 1024
    m.dtype = "float32"         # compute dtype: "float32" | "bfloat16" (params stay fp32)
    m.attention_impl = config_dict.placeholder(str)  # None: XLA; "cudnn" on GPUs
    m.remat = "none"            # recompute each block in the backward pass: "none" | "full" | "dots"
    m.scan_layers = False       # each block group as one nn.scan over stacked params: one block to compile
    m.head = "diffloss"         # "diffloss" (continuous tokens) | "softmax" (VQ codes: the paper's CrossEnt column)
    return m


def ar_model() -> ml_collections.ConfigDict:
    """The causal AR baseline's `model` section (`marjax.models.ar.AR`): MAR-L's width, depth 32. The
    token grid and the softmax head's vocabulary follow from the data and the tokenizer."""
    m = ml_collections.ConfigDict()
    m.patch_size = 1
    m.width = 1024
    m.depth = 32
    m.num_heads = 16
    m.mlp_ratio = 4.0
    m.order = "raster"          # "raster" | "random" (adds the embedding of the position to predict)
    m.head = "diffloss"         # "diffloss" (continuous tokens: pixels, kl) | "softmax" (codes: vq)
    m.attn_dropout = 0.1
    m.proj_dropout = 0.1
    m.diffloss_depth = 3
    m.diffloss_width = 1024
    m.dtype = "float32"
    m.attention_impl = config_dict.placeholder(str)
    m.remat = "none"
    m.scan_layers = False
    return m


def gpt_model() -> ml_collections.ConfigDict:
    """VQ-GPT's `model` section (`marjax.models.gpt.GPT`, LlamaGen's ModelArgs): GPT-B. The class
    dropout (and with it the null class) is `train.label_drop_prob`."""
    m = ml_collections.ConfigDict()
    m.width = 768
    m.depth = 12
    m.num_heads = 12
    m.num_kv_heads = config_dict.placeholder(int)  # None: one K/V head per query head
    m.multiple_of = 256
    m.ffn_dim_multiplier = config_dict.placeholder(float)
    m.rope_base = 10000.0
    m.norm_eps = 1e-5
    m.token_dropout = 0.1
    m.attn_dropout = 0.0
    m.resid_dropout = 0.1
    m.ffn_dropout = 0.1
    m.drop_path_rate = 0.0
    m.dtype = "float32"
    m.attention_impl = config_dict.placeholder(str)
    return m


def var_model() -> ml_collections.ConfigDict:
    """VAR's `model` section (`marjax.models.var.VAR`): VAR-d16. The scales are `tokenizer.patch_nums`,
    the class dropout `train.label_drop_prob`."""
    m = ml_collections.ConfigDict()
    m.width = 1024
    m.depth = 16
    m.num_heads = 16
    m.mlp_ratio = 4.0
    m.drop_path_rate = 0.1 * 16 / 24
    m.attn_l2_norm = True
    m.shared_aln = False
    m.init_adaln = 0.5
    m.init_adaln_gamma = 1e-5
    m.init_head = 0.02
    m.init_std = config_dict.placeholder(float)  # None: sqrt(1 / (3 width))
    m.dtype = "float32"
    m.attention_impl = config_dict.placeholder(str)
    return m


MODEL_SECTIONS = {"mar": mar_model, "ar": ar_model, "gpt": gpt_model, "var": var_model}
