"""Defaults shared by every config; each config file overrides what its run needs."""

import ml_collections


# FixMatch's views of a 32 px image: flip and 4 px reflect-padded crop; then RandAugment with
# a magnitude drawn per image and op in [1, 10] (each of 2 ops applied with probability 0.5)
# and a 16 px cutout (half the side) filled with grey.
SSL_WEAK_AUGMENT = "flip_lr|random_crop(padding=4, pad_mode='reflect')"
SSL_STRONG_AUGMENT = (SSL_WEAK_AUGMENT + "|randaugment(num_ops=2, magnitude=10, magnitude_min=1, "
                      "p=0.5)|cutout(size=16, fill=127)")


def base_config() -> ml_collections.ConfigDict:
  """A supervised run: dataset and split, model, augmentation, optimiser, cadence."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data: `dataset` spec and split (see effcv_jax/data/sources.py). A class-balanced
  # hold-out of `num_holdout` and a labelled subset of `num_labelled` (-1: all) are
  # carved out of the training split with `split_seed`; eval_split 'holdout'
  # evaluates on that hold-out, any other name reads that split of eval_dataset.
  config.dataset = ""
  config.train_split = "train"
  config.eval_dataset = ""
  config.eval_split = "test"
  config.num_holdout = 0
  config.num_labelled = -1
  config.split_seed = 0
  config.num_classes = 10
  # Resize images on the host (shorter side, then centre crop) to image_size x
  # image_size: datasets of mixed sizes such as ImageNet; 0 keeps the stored size.
  config.image_size = 0
  # Instead of that resize, a named host pre-processing to image_size
  # (effcv_jax/data/efficientnet_preprocess.py): 'efficientnet' trains on the official random
  # crops of the full images (bicubic, flip) and evaluates (and a teacher labels) the
  # official centre crop of image_size / (image_size + 32) of the shorter side.
  # 'efficientnet_fast' (effcv_jax/data/jpeg_preprocess.py) cuts the same crops straight from
  # encoded JPEG records with Pillow (DCT-scaled decoding where the crop allows it).
  config.host_preprocessing = ""
  # Grain worker processes that read and map the training records (host decoding and crops);
  # 0 maps them in this process. The same batches and checkpoints with any count.
  config.data_workers = 0
  config.input_mean = (0.5,)   # per channel, on x / 255
  config.input_std = (0.5,)

  config.model = "cnn_small"
  config.model_kwargs = ml_collections.ConfigDict()
  # How the model's convolutions run (effcv_jax/models/conv.py): 'auto' (oneDNN on one
  # CPU device where available, else XLA), 'onednn', 'xla' or 'lax'. The parameters and, up to
  # float rounding, the outputs do not depend on it; $EFFCV_CONV overrides it at start-up.
  config.conv_backend = "auto"
  # Start from pretrained weights (effcv_jax/pretrained/transfer.py): kind
  # 'keras_mobilenet_v1' | 'torch_cifar_resnet' (path relative to the data directory)
  # | 'workdir' (the latest checkpoint of another run); '' trains from scratch.
  # new_head re-initialises the parameters matching head_patterns (() = the model
  # family's classifier) for num_classes; check_preprocessing refuses input_mean/std
  # other than the weights'; zero_head starts the new head at zero (the model's own init
  # can give a 10-class head huge logits on ImageNet features). Read only when a run
  # starts, not when it resumes.
  config.init_from = ml_collections.ConfigDict(dict(
      kind="", path="", new_head=True, head_patterns=(), check_preprocessing=True,
      zero_head=False))
  # Resize the (augmented) images to input_size x input_size inside the step, before
  # normalisation, for training and evaluation; 0 feeds the dataset's size.
  config.input_size = 0
  # Repeat grey (1-channel) images to this many channels inside the step, before
  # normalisation (grey data into an RGB model, e.g. ImageNet weights); 0 feeds them as they are.
  config.input_channels = 0
  # Train with the model in inference mode (batch norm uses and keeps its running
  # statistics, dropout off): a linear probe of a pretrained backbone.
  config.freeze_batch_stats = False
  # Augmentation spec run inside the train step, e.g. "flip_lr|random_crop(padding=4)".
  config.augment = ""
  config.label_smoothing = 0.0
  # AugMix's Jensen-Shannon consistency (supervised step; augment must end with the augmix op,
  # whose arguments set severity, width, depth and alpha): train on the clean image and two
  # AugMix views, loss CE(clean) + jsd_weight * JS(clean, view 1, view 2); batch norm sees all
  # three. Off: augmix, where the spec has it, is one view like any other op.
  config.augmix = ml_collections.ConfigDict(dict(jsd=False, jsd_weight=12.0))
  # Adversarial training (supervised step): method 'pgd' or 'fgsm' ('' off) trains on
  # L-infinity adversarial versions of the augmented images, made inside the step from the
  # current weights (effcv_jax/robustness/adversarial.py): radius epsilon in pixel units of
  # [0, 255] images, PGD's steps, step_size (0: 2.5 * epsilon / steps for PGD, epsilon for
  # FGSM), from a random point of the ball with random_start. Madry et al.'s CIFAR-10
  # training: pgd, 8, 7 steps of 2. advprop=True (AdvProp, Xie et al. 2020; needs a method
  # and a model with batch norm) trains on the clean AND the adversarial images, loss
  # CE(clean) + CE(adversarial), the adversarial ones normalised by auxiliary batch-norm
  # statistics kept in the train state (scale and offset shared); evaluation, export and
  # teaching use the main statistics. The paper's ImageNet attacker: pgd at epsilon 1-4
  # with a few steps of step_size 1.
  config.adversarial = ml_collections.ConfigDict(dict(
      method="", epsilon=8.0, steps=7, step_size=0.0, random_start=True, advprop=False))
  # Keep an exponential moving average of the weights and batch-norm statistics, with
  # this decay (warmed up as min(decay, (1 + t) / (10 + t)) at update t: effcv_jax/ema.py);
  # evaluation, results, zoo export, pseudo-labelling and teachers then use the averages.
  # 0 keeps none. The official Noisy Student recipe uses 0.9999.
  config.ema_decay = 0.0
  # What convolutions, matrix products and batch-norm outputs compute in: 'float32' or
  # 'bfloat16' (parameters, optimiser state, batch statistics and the loss stay float32).
  config.dtype = "float32"
  # Rematerialise the model's residual blocks (ResNets, WRNs, EfficientNets): the backward
  # pass recomputes each block's activations instead of keeping them, for less memory per
  # step at the cost of a second forward pass of the blocks (benchmarks/remat_memory.py).
  config.remat = False

  config.batch_size = 128
  config.eval_batch_size = 500
  config.num_steps = 1000
  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
      schedule="cosine", warmup_steps=0, grad_clip_norm=0.0,
      # schedule 'exponential': lr * decay_rate ** (step / decay_every_steps), floored with
      # staircase (optim.make_schedule); decay_every_steps may be fractional.
      decay_rate=0.97, decay_every_steps=0.0, staircase=True,
      # name 'rmsprop' (TF1's RMSPropOptimizer): mean-square decay and epsilon (in the sqrt).
      rms_decay=0.9, rms_epsilon=1e-3,
      # Gradients are multiplied by grad_scale before clipping, weight decay and the update.
      grad_scale=1.0,
      # ((regex on parameter path, lr multiplier; 0 freezes), ...); empty: one group.
      # A multiplier may be ((from_step, m), ...): ((0, 0.0), (500, 1.0)) unfreezes at
      # step 500. optim.layerwise_lr_rules builds layer-wise decay rules.
      lr_rules=()))

  config.log_every = 100
  config.eval_every = 1000
  config.checkpoint_every = 500
  config.keep_checkpoints = 3
  # A run whose steps stop completing ends with exit status 75 (effcv_jax/watchdog.py):
  # when no step completed for max(min_stall_seconds, stall_factor * median step time),
  # or for startup_seconds before the first (data loading and compilation).
  config.watchdog = ml_collections.ConfigDict(dict(
      stall_factor=20.0, min_stall_seconds=300.0, startup_seconds=1800.0))
  # Semi-supervised training (effcv_jax/ssl; read only by its step): the algorithm, mu
  # unlabelled images per labelled one, the unlabelled loss weight, pseudo-label threshold,
  # UDA's temperature, the ramp of lambda_u (fraction of num_steps; Pseudo-Label, Mean
  # Teacher), Mean Teacher's EMA, FlexMatch's warm-up, FreeMatch's EMA and fairness weight,
  # SoftMatch's EMA, Gaussian width divisor (sigma / n_sigma) and uniform alignment,
  # distribution alignment ('', 'uniform', 'labelled') and its EMA, and the weak and strong
  # views' augmentation specs (labelled images get the weak view). Defaults: FixMatch's;
  # ssl.algorithms.PAPER_DEFAULTS holds each algorithm's.
  config.ssl = ml_collections.ConfigDict(dict(
      algorithm="fixmatch", mu=7, lambda_u=1.0, threshold=0.95, temperature=1.0,
      unsup_warmup=0.4, ema_m=0.999, flex_warmup=True, freematch_ema=0.999,
      lambda_fairness=0.01, softmatch_ema=0.999, softmatch_n_sigma=2.0,
      softmatch_uniform_align=True, dist_align="", dist_align_m=0.999,
      weak_augment=SSL_WEAK_AUGMENT, strong_augment=SSL_STRONG_AUGMENT))
  # Generated images in the supervised step (effcv_jax/gan/mixing.py): the fraction `ratio`
  # in [0, 1) of every training batch is replaced by images of the finished GAN run in
  # `workdir` (experiments/gan.py), of uniformly drawn classes, made inside the step from its
  # frozen generator; ratio 0 turns it off.
  config.gan_augment = ml_collections.ConfigDict(dict(workdir="", ratio=0.0))
  return config


def gan_base_config() -> ml_collections.ConfigDict:
  """A class-conditional GAN run (experiments/gan.py, effcv_jax/gan/run.py): the data keys
  of base_config (the same labelled split for the same dataset, num_holdout, num_labelled
  and split_seed), the batch, cadence, watchdog and convolution backend, and the `gan`
  group."""
  base = base_config()
  config = ml_collections.ConfigDict()
  for key in ("seed", "dataset", "train_split", "eval_dataset", "eval_split", "num_holdout",
              "num_labelled", "split_seed", "num_classes", "image_size", "batch_size",
              "num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
              "watchdog", "conv_backend"):
    config[key] = base[key]
  config.batch_size = 64
  # noise_dim: the generator's noise (and label embedding) width; width: both networks'
  # base channel count; groups: the generator's group-norm groups (must divide width);
  # loss 'hinge' or 'wgan_gp' (gp_weight on the gradient penalty); Adam learning rates and
  # betas of each network (DCGAN's 2e-4, 0.5, 0.999); num_eval_images: the evaluation
  # images the discriminator scores at each evaluation; grid_per_class: the samples per
  # class (one row each) of the workdir's samples.png.
  config.gan = ml_collections.ConfigDict(dict(
      noise_dim=64, width=32, groups=8, loss="hinge", gp_weight=10.0,
      generator_lr=2e-4, discriminator_lr=2e-4, beta1=0.5, beta2=0.999,
      num_eval_images=1000, grid_per_class=10))
  return config


def tf_efficientnet_optimizer(lr: float, weight_decay: float, steps_per_epoch: float,
                              decay_epochs: float = 2.4) -> ml_collections.ConfigDict:
  """The `optimizer` group of the official TF EfficientNet / Noisy Student training
  (noisystudent utils.py build_optimizer and build_learning_rate): TF1 RMSProp (decay 0.9,
  momentum 0.9, epsilon 1e-3), `lr` after a linear warm-up of 5 epochs, then x 0.97 every
  `decay_epochs`, staircase; coupled L2 `weight_decay`."""
  optimizer = base_config().optimizer
  optimizer.update(dict(
      name="rmsprop", lr=lr, momentum=0.9, nesterov=False, rms_decay=0.9, rms_epsilon=1e-3,
      weight_decay=weight_decay, schedule="exponential", decay_rate=0.97, staircase=True,
      decay_every_steps=steps_per_epoch * decay_epochs,
      warmup_steps=int(5 * steps_per_epoch)))
  return optimizer
