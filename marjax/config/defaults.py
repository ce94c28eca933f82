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


def base_config() -> ml_collections.ConfigDict:
    """The defaults: a MAR-L-sized transformer on ImageNet-256 KL-16 latents, reference recipe."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.task = "mar"                    # a key of marjax.tasks.registry.TASKS: "mar" | "tokenizer"

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"            # "tfds" | "image_folder" | "digits" | "cached_latents"
    c.data.tfds_name = "imagenet2012"
    c.data.tfds_data_dir = config_dict.placeholder(str)  # None: TFDS's default (~/tensorflow_datasets)
    c.data.split = "train"
    c.data.path = ""                  # image_folder: class subfolders; cached_latents: the cache
    c.data.skip_bad_images = False    # image_folder: skip (and count) unreadable files instead of stopping
    c.data.image_size = 256
    c.data.channels = 3
    c.data.num_classes = 1000
    c.data.random_flip = True
    c.data.worker_count = 0           # grain worker processes (0: decode in the main process)
    c.data.prefetch_buffer_size = 2

    # What the model's tokens are, and (task="tokenizer") the autoencoder a tokenizer run trains.
    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.kind = "kl"           # "pixels" (pixel-patch tokens) | "kl" (continuous latents) | "vq" (codes)
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

    c.model = ml_collections.ConfigDict()
    c.model.patch_size = 1
    c.model.encoder_width = 1024
    c.model.encoder_depth = 16
    c.model.encoder_heads = 16
    c.model.decoder_width = 1024
    c.model.decoder_depth = 16
    c.model.decoder_heads = 16
    c.model.mlp_ratio = 4.0
    c.model.buffer_size = 64
    c.model.attn_dropout = 0.1
    c.model.proj_dropout = 0.1
    c.model.diffloss_depth = 3
    c.model.diffloss_width = 1024
    c.model.dtype = "float32"         # compute dtype: "float32" | "bfloat16" (params stay fp32)
    c.model.attention_impl = config_dict.placeholder(str)  # None: XLA; "cudnn" on GPUs
    c.model.remat = "none"            # recompute each block in the backward pass: "none" | "full" | "dots"
    c.model.scan_layers = False       # each block group as one nn.scan over stacked params: one block to compile

    c.train = ml_collections.ConfigDict()
    c.train.global_batch_size = 2048
    c.train.num_epochs = 400.0
    c.train.num_steps = config_dict.placeholder(int)  # set: overrides num_epochs
    c.train.warmup_epochs = 100.0
    c.train.base_lr = 1e-4            # lr = base_lr * global_batch_size / 256, as the reference
    c.train.lr_schedule = "constant"  # "constant" | "cosine"
    c.train.min_lr = 0.0
    c.train.weight_decay = 0.02
    c.train.b1 = 0.9
    c.train.b2 = 0.95
    c.train.grad_clip = 3.0
    c.train.ema_rate = 0.9999
    c.train.mask_ratio_min = 0.7
    c.train.label_drop_prob = 0.1
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
    c.train.num_grid_samples = 16

    c.sample = ml_collections.ConfigDict()
    c.sample.num_images = 64
    c.sample.classes = ""             # "" : balanced over all classes; else e.g. "207,360,387"
    c.sample.batch_size = 64
    c.sample.num_iter = 64
    c.sample.cfg = 1.0
    c.sample.cfg_schedule = "linear"  # "linear" | "constant"
    c.sample.temperature = 1.0
    c.sample.num_diffusion_steps = 100
    c.sample.clip_denoised = False    # clip x_0 predictions to [-1, 1]: pixel models (not the reference's latents)
    c.sample.use_ema = True
    c.sample.seed = 0
    c.sample.step = config_dict.placeholder(int)  # None: the latest checkpoint

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

