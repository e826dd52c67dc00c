"""Every mistake in a run's config caught before training, and before the workdir is touched.

  check_config(config)        pure: no data, no compute, no writes. Refuses every key whose
                              value no run can use (a negative step count, a cadence, batch
                              size or checkpoint count of 0, a learning-rate regex that does not
                              compile, an augmentation spec that does not parse, a model that
                              cannot be built, an input_size or image_size below the model's
                              smallest input, ...).
  check_run(config, run_data, mesh, make_step=..., make_eval_step=...)
                              data-aware, still no compute: a mixing augmentation with at
                              least 2 images per device, evaluation images of the training
                              images' shape, input_mean / input_std of their channel count,
                              images no smaller than the model takes (AlexNet, VGG), and
                              the train and eval steps traced with jax.eval_shape on the real
                              shapes and batch structure (abstract state: nothing is computed).

Both raise errors.ConfigError, whose message names the dotted key, its value and what is
allowed (or, for a step that cannot be traced, the keys most likely at fault and the first
line of the original error). train.train_and_evaluate runs both before its first step;
Noisy Student, distillation and sweeps run `check_config` on every stage's or variant's config
before any of them trains. `Rule` and `check_rules` check the keys of those drivers' own
settings the same way.
"""

import dataclasses
import math
import re
from typing import Any, Callable, Iterable, Sequence

import jax
import ml_collections
import numpy as np

from effcv_jax import augment as augment_lib
from effcv_jax import sharding
from effcv_jax import task as task_lib
from effcv_jax.data import pipeline
from effcv_jax.data import run_data as run_data_lib
from effcv_jax.errors import ConfigError, UserError
from effcv_jax.models import DTYPES as MODEL_DTYPES
from effcv_jax.models import min_input_size as model_min_input_size
from effcv_jax.models import onednn_conv
from effcv_jax.models.conv import BACKENDS as CONV_BACKENDS
from effcv_jax.pretrained.transfer import INIT_KINDS
from effcv_jax.ssl import algorithms as ssl_algorithms

_ABSENT = object()


@dataclasses.dataclass(frozen=True)
class Allowed:
  """A set of allowed values: `test(value)` says whether a value is in it, `text` describes it."""
  test: Callable[[Any], bool]
  text: str


@dataclasses.dataclass(frozen=True)
class Rule:
  """A config key (dotted, relative to the checked config), its allowed values, and what a
  value outside them would do or what the key means (for the message)."""
  key: str
  allowed: Allowed
  why: str = ""


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)) and math.isfinite(value))


def integers(low: int, high: int | None = None) -> Allowed:
  """Integers in [low, high] (no upper bound when high is None)."""
  text = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
  return Allowed(lambda v: _is_int(v) and v >= low and (high is None or v <= high), text)


def numbers(low: float | None = None, high: float | None = None, *, low_open: bool = False,
            high_open: bool = False) -> Allowed:
  """Finite numbers between low and high; an open end excludes its bound."""
  def test(value):
    return (_is_number(value)
            and (low is None or value > low or (not low_open and value == low))
            and (high is None or value < high or (not high_open and value == high)))
  if high is None:
    text = f"a number {'>' if low_open else '>='} {low}"
  else:
    text = (f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")
  return Allowed(test, text)


def choices(values: Iterable[Any]) -> Allowed:
  """One of `values`."""
  values = tuple(values)
  return Allowed(lambda v: v in values, "one of " + ", ".join(repr(v) for v in values))


def _labelled_count() -> Allowed:
  return Allowed(lambda v: _is_int(v) and (v == -1 or v >= 1),
                 "-1 (every example left after the hold-out) or an integer >= 1")


def _mean_or_std() -> Allowed:
  return Allowed(lambda v: isinstance(v, (list, tuple)) and len(v) >= 1
                 and all(_is_number(x) for x in v),
                 "a non-empty tuple of numbers: one value, or one per image channel")


def _flag() -> Allowed:
  """A bool (not 0 or 1, which `choices((True, False))` would let through)."""
  return Allowed(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def _clip_norm() -> Allowed:
  return Allowed(lambda v: v is None or (_is_number(v) and v >= 0),
                 "a number >= 0 (0 or None: no clipping)")


# The keys of a training config (configs/common.py) and their allowed values.
TRAINING_RULES = (
    Rule("num_steps", integers(0),
         "0 trains nothing: it saves and evaluates the initial (e.g. imported) weights"),
    Rule("batch_size", integers(1), "the global training batch"),
    Rule("eval_batch_size", integers(1), "the global evaluation batch"),
    Rule("log_every", integers(1), "the steps between training-metric lines"),
    Rule("eval_every", integers(1), "the steps between evaluations"),
    Rule("checkpoint_every", integers(1), "the steps between checkpoints"),
    Rule("keep_checkpoints", integers(1),
         "the checkpoints kept; with 0 none would be left and the trained model would be lost"),
    Rule("num_labelled", _labelled_count(),
         "the class-balanced labelled examples taken from the training split"),
    Rule("num_holdout", integers(0), "the class-balanced examples held out for evaluation"),
    Rule("split_seed", integers(0, 2**31 - 1), "the seed of the hold-out / labelled split"),
    Rule("seed", integers(0, 2**31 - 1), "the seed of initialisation and data order"),
    Rule("num_classes", integers(2), "the classes of the dataset's labels"),
    Rule("image_size", integers(0), "host-side resize of the images; 0 keeps their size"),
    Rule("host_preprocessing", choices(run_data_lib.HOST_PREPROCESSING_KINDS),
         "the host pre-processing to image_size that replaces the resize ('' resizes)"),
    Rule("data_workers", integers(0, 64),
         "the grain worker processes that read and map the training records (0: in-process)"),
    Rule("input_size", integers(0), "in-step resize of the model's inputs; 0 keeps their size"),
    Rule("input_channels", integers(0), "in-step repeat of grey images; 0 keeps their channels"),
    Rule("input_mean", _mean_or_std(), "per-channel mean of x / 255"),
    Rule("input_std", _mean_or_std(), "per-channel standard deviation of x / 255"),
    Rule("label_smoothing", numbers(0.0, 1.0, high_open=True),
         "1 would make every target uniform"),
    Rule("conv_backend", choices(CONV_BACKENDS), "how the model's convolutions run"),
    Rule("ema_decay", numbers(0.0, 1.0, high_open=True),
         "the decay of the weights' moving average; 0 keeps none, 1 would never move"),
    Rule("dtype", choices(MODEL_DTYPES), "what the model computes in"),
    Rule("remat", _flag(),
         "whether the model's residual blocks are recomputed in the backward pass"),
    Rule("init_from.kind", choices(("",) + tuple(INIT_KINDS)),
         "the format of the pretrained weights; '' trains from scratch"),
    Rule("optimizer.name", choices(("sgd", "adamw", "rmsprop")), "the optimiser"),
    Rule("optimizer.schedule", choices(("cosine", "constant", "exponential")),
         "the learning-rate schedule"),
    Rule("optimizer.decay_rate", numbers(0.0, 1.0, low_open=True),
         "the exponential schedule's factor per decay"),
    Rule("optimizer.decay_every_steps", numbers(0.0),
         "the exponential schedule's steps between decays (> 0 when it is used)"),
    Rule("optimizer.staircase", choices((True, False)),
         "whether the exponential schedule decays in steps"),
    Rule("optimizer.rms_decay", numbers(0.0, 1.0, high_open=True), "RMSProp's mean-square decay"),
    Rule("optimizer.rms_epsilon", numbers(0.0, low_open=True),
         "RMSProp's epsilon (inside the square root)"),
    Rule("optimizer.grad_scale", numbers(0.0, low_open=True),
         "the factor on the gradients before the update"),
    Rule("optimizer.lr", numbers(0.0, low_open=True), "the base learning rate"),
    Rule("optimizer.warmup_steps", integers(0), "the steps of linear warm-up"),
    Rule("optimizer.weight_decay", numbers(0.0), "the weight decay"),
    Rule("optimizer.momentum", numbers(0.0, 1.0, high_open=True), "SGD momentum"),
    Rule("optimizer.grad_clip_norm", _clip_norm(), "the global gradient-norm clip"),
    Rule("watchdog.stall_factor", numbers(0.0, low_open=True), "see effcv_jax/watchdog.py"),
    Rule("watchdog.min_stall_seconds", numbers(0.0, low_open=True),
         "see effcv_jax/watchdog.py"),
    Rule("watchdog.startup_seconds", numbers(0.0, low_open=True), "see effcv_jax/watchdog.py"),
)

# AugMix's consistency loss and adversarial training (read by the supervised train step).
ROBUST_TRAINING_RULES = (
    Rule("augmix.jsd", choices((True, False)),
         "train on the clean image and two AugMix views with the Jensen-Shannon consistency "
         "loss (the augment spec must end with augmix)"),
    Rule("augmix.jsd_weight", numbers(0.0), "the weight of the Jensen-Shannon term (paper: 12)"),
    Rule("adversarial.method", choices(("", "pgd", "fgsm")),
         "adversarial training's attack ('' trains on the augmented images)"),
    Rule("adversarial.epsilon", numbers(0.0, 255.0, low_open=True),
         "the L-infinity radius in pixel units of [0, 255] images (8 means 8/255)"),
    Rule("adversarial.steps", integers(1), "PGD's steps (FGSM takes one)"),
    Rule("adversarial.step_size", numbers(0.0),
         "the attack's step in pixel units; 0: 2.5 * epsilon / steps for PGD, epsilon for FGSM"),
    Rule("adversarial.random_start", choices((True, False)),
         "whether the attack starts from a uniform random point in the epsilon ball"),
    Rule("adversarial.advprop", _flag(),
         "AdvProp: train on the clean and the adversarial images, the adversarial ones with "
         "their own batch-norm statistics"),
)

# Generated images in the supervised step (effcv_jax/gan/mixing.py).
GAN_AUGMENT_RULES = (
    Rule("gan_augment.ratio", numbers(0.0, 1.0, high_open=True),
         "the fraction of each training batch replaced by generated images (0: off)"),
    Rule("gan_augment.workdir", Allowed(lambda v: isinstance(v, str), "a path (a string)"),
         "the workdir of a finished GAN run"),
)

# The semi-supervised keys (config.ssl, effcv_jax/ssl/algorithms.py).
SSL_RULES = (
    Rule("ssl.algorithm", choices(ssl_algorithms.ALGORITHMS), "the semi-supervised algorithm"),
    Rule("ssl.mu", integers(1), "the unlabelled images per labelled image in a step"),
    Rule("ssl.lambda_u", numbers(0.0), "the weight of the unlabelled loss"),
    Rule("ssl.threshold", numbers(0.0, 1.0),
         "the confidence a pseudo-label needs (a probability)"),
    Rule("ssl.temperature", numbers(0.0, low_open=True), "UDA's sharpening temperature"),
    Rule("ssl.unsup_warmup", numbers(0.0, 1.0),
         "the fraction of num_steps over which lambda_u ramps up (0: no ramp)"),
    Rule("ssl.ema_m", numbers(0.0, 1.0, high_open=True), "the Mean Teacher's EMA decay"),
    Rule("ssl.flex_warmup", choices((True, False)), "FlexMatch's threshold warm-up"),
    Rule("ssl.freematch_ema", numbers(0.0, 1.0, high_open=True), "FreeMatch's EMA decay"),
    Rule("ssl.lambda_fairness", numbers(0.0), "the weight of FreeMatch's fairness term"),
    Rule("ssl.softmatch_ema", numbers(0.0, 1.0, high_open=True),
         "SoftMatch's EMA decay (confidence mean and variance, uniform alignment)"),
    Rule("ssl.softmatch_n_sigma", numbers(0.0, low_open=True),
         "SoftMatch's Gaussian width divisor (sigma / n_sigma)"),
    Rule("ssl.softmatch_uniform_align", choices((True, False)), "SoftMatch's uniform alignment"),
    Rule("ssl.dist_align", choices(ssl_algorithms.DIST_ALIGN_TARGETS),
         "distribution alignment's target ('' turns it off)"),
    Rule("ssl.dist_align_m", numbers(0.0, 1.0, high_open=True),
         "distribution alignment's EMA decay"),
)


def lookup(config: ml_collections.ConfigDict, dotted: str) -> Any:
  """The value of a dotted key of `config`, or _ABSENT when the config lacks it (an older
  config.json) or a parent is not a group."""
  node = config
  for name in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
      return _ABSENT
    node = node[name]
  return node


def _where(key_prefix: str, key: str) -> str:
  return f"config.{key_prefix}{key}"


def check_rules(config: ml_collections.ConfigDict, rules: Sequence[Rule],
                key_prefix: str = "") -> None:
  """Raises ConfigError for the first key of `rules` whose value `config` has is not allowed;
  keys the config lacks are skipped. key_prefix: the config's own dotted position in the
  command line's config ('teacher.', 'student.'), for the message."""
  for rule in rules:
    value = lookup(config, rule.key)
    if value is _ABSENT or rule.allowed.test(value):
      continue
    why = f": {rule.why}" if rule.why else ""
    where = _where(key_prefix, rule.key)
    raise ConfigError(f"{where} = {value!r} is out of range (allowed: {rule.allowed.text})"
                      f"{why}. Set --{where} to an allowed value.")


def _check_lr_rules(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """optimizer.lr_rules: (regex, multiplier) pairs whose regexes compile."""
  rules = lookup(config, "optimizer.lr_rules")
  if rules is _ABSENT:
    return
  where = _where(key_prefix, "optimizer.lr_rules")
  for index, rule in enumerate(rules or ()):
    if not (isinstance(rule, (list, tuple)) and len(rule) == 2 and isinstance(rule[0], str)):
      raise ConfigError(f"{where}[{index}] = {rule!r} is not a (regex, multiplier) pair, e.g. "
                        "(r'head/.*', 1.0)")
    pattern = rule[0]
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f"{where}[{index}]: pattern {pattern!r} is not a valid regular "
                        f"expression ({e}); fix the pattern in {where}") from e


def _check_augment(config: ml_collections.ConfigDict, key_prefix: str,
                   key: str = "augment") -> None:
  """augment (or another spec key): a spec that parses and whose ops accept their arguments."""
  spec = lookup(config, key)
  if spec is _ABSENT:
    return
  where = _where(key_prefix, key)
  if not isinstance(spec, str):
    raise ConfigError(f"{where} = {spec!r} is not an augmentation spec string such as "
                      "'flip_lr|random_crop(padding=4)'")
  try:
    augment_lib.build(spec)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{where} = {spec!r} does not parse: {_first_line(e)}") from e


def _check_robust_training(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """augmix.* and adversarial.*: allowed values; the consistency loss needs an augment spec
  that ends with augmix, and does not combine with adversarial training; AdvProp needs an
  attack and statistics the step updates (_check_advprop)."""
  check_rules(config, ROBUST_TRAINING_RULES, key_prefix)
  _check_advprop(config, key_prefix)
  if lookup(config, "augmix.jsd") is not True:
    return
  spec = lookup(config, "augment")
  spec = "" if spec is _ABSENT else spec
  if not augment_lib.augmix.ends_with_augmix(augment_lib.build(spec)):
    raise ConfigError(
        f"{_where(key_prefix, 'augmix.jsd')} = True needs {_where(key_prefix, 'augment')} to "
        f"end with the augmix op (it is {spec!r}): the step trains on the clean image (the "
        "spec's earlier ops) and two views of that last op, e.g. "
        "'flip_lr|random_crop(padding=4)|augmix'")
  if lookup(config, "adversarial.method") not in (_ABSENT, ""):
    raise ConfigError(
        f"{_where(key_prefix, 'augmix.jsd')} = True and {_where(key_prefix, 'adversarial.method')}"
        f" = {lookup(config, 'adversarial.method')!r} do not combine: choose one (set "
        f"--{_where(key_prefix, 'adversarial.method')}='' or "
        f"--{_where(key_prefix, 'augmix.jsd')}=False)")


def _check_advprop(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """adversarial.advprop = True needs adversarial.method 'pgd' or 'fgsm' (the attack making
  the adversarial images) and a step that updates batch statistics (not freeze_batch_stats).
  Whether the model has batch norm at all is _check_advprop_model's."""
  if lookup(config, "adversarial.advprop") is not True:
    return
  key = _where(key_prefix, "adversarial.advprop")
  method = lookup(config, "adversarial.method")
  if method in (_ABSENT, ""):
    raise ConfigError(
        f"{key} = True needs {_where(key_prefix, 'adversarial.method')} = 'pgd' or 'fgsm' (it "
        f"is {'' if method is _ABSENT else method!r}): the attack that makes the adversarial "
        f"images AdvProp trains on; set --{_where(key_prefix, 'adversarial.method')}=pgd "
        f"(the paper: epsilon 1-4, a few steps of step_size 1) or --{key}=False")
  if lookup(config, "freeze_batch_stats") is True:
    raise ConfigError(
        f"{key} = True and {_where(key_prefix, 'freeze_batch_stats')} = True do not combine: "
        "AdvProp normalises the clean and the adversarial images by separate batch "
        "statistics that the step updates, and frozen statistics are never updated; set "
        f"--{key}=False or --{_where(key_prefix, 'freeze_batch_stats')}=False")


def _check_advprop_model(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """adversarial.advprop = True needs a model with batch norm (a 'batch_stats' collection):
  the model's variables are traced (jax.eval_shape, nothing computed) on the smallest images
  it takes (config.input_size or image_size when set)."""
  if lookup(config, "adversarial.advprop") is not True:
    return
  model = task_lib.build_model(config)
  side = config.get("input_size", 0) or config.get("image_size", 0) or max(
      model_min_input_size(model), 8)
  channels = config.get("input_channels", 0) or 3
  try:
    variables = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), np.zeros((1, side, side, channels), np.float32), train=False))
  except Exception:  # pylint: disable=broad-except
    return   # a model that cannot be initialised here is check_run's to report
  if jax.tree.leaves(variables.get("batch_stats", {})):
    return
  kwargs = dict(lookup(config, "model_kwargs") or {})
  raise ConfigError(
      f"{_where(key_prefix, 'adversarial.advprop')} = True needs a model with batch norm, but "
      f"{_where(key_prefix, 'model')} = {config.model!r}"
      + (f" with {_where(key_prefix, 'model_kwargs')} = {kwargs}" if kwargs else "")
      + " has no batch statistics to keep apart: choose a model with batch norm (e.g. "
      f"model_kwargs.batch_norm=True for alexnet) or set "
      f"--{_where(key_prefix, 'adversarial.advprop')}=False")


def refuse_supervised_only_keys(config: ml_collections.ConfigDict, key_prefix: str,
                                step: str) -> None:
  """ConfigError when `config` turns on augmix.jsd, adversarial.method, adversarial.advprop
  or gan_augment.ratio, which only the supervised train step reads, for a run whose `step`
  (e.g. 'the distillation step') would silently ignore them."""
  for key, off in (("augmix.jsd", False), ("adversarial.method", ""),
                   ("adversarial.advprop", False), ("gan_augment.ratio", 0.0)):
    value = lookup(config, key)
    if value not in (_ABSENT, off):
      raise ConfigError(f"{_where(key_prefix, key)} = {value!r} is read by the supervised "
                        f"train step only; {step} would ignore it: set "
                        f"--{_where(key_prefix, key)}={off!r}")


def _check_model(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """model, model_kwargs, conv_backend, dtype, remat: a model that can be built (nothing
  initialised), compute in dtype on conv_backend and, with remat, rematerialise its blocks."""
  dtype = lookup(config, "dtype")
  lowered = dtype not in (_ABSENT, "float32")
  remat = lookup(config, "remat") not in (_ABSENT, False)
  plain_config = config.copy_and_resolve_references() if lowered or remat else config
  if lowered:
    plain_config.dtype = "float32"
  if remat:
    plain_config.remat = False
  try:
    task_lib.build_model(plain_config)
  except (ValueError, TypeError) as e:
    kwargs = dict(lookup(config, "model_kwargs") or {})
    raise ConfigError(
        f"{_where(key_prefix, 'model')} = {config.model!r} with "
        f"{_where(key_prefix, 'model_kwargs')} = {kwargs} cannot be built: {_first_line(e)}. "
        "Check the model name (effcv_jax/models) and the keyword arguments it takes.") from e
  if remat:
    plain_config.remat = True
    try:
      task_lib.build_model(plain_config)
    except ValueError as e:
      raise ConfigError(
          f"{_where(key_prefix, 'remat')} = True does not fit {_where(key_prefix, 'model')} = "
          f"{config.model!r}: {_first_line(e)}; set --{_where(key_prefix, 'remat')}=False"
      ) from e
  if not lowered:
    return
  fix = f"set --{_where(key_prefix, 'dtype')}=float32"
  if lookup(config, "conv_backend") == "onednn" and onednn_conv.bf16_support() != "native":
    raise ConfigError(
        f"{_where(key_prefix, 'dtype')} = {dtype!r} with "
        f"{_where(key_prefix, 'conv_backend')} = 'onednn': this CPU has no AVX-512 BF16 or "
        f"AMX, so oneDNN would emulate bfloat16 (slower than float32) or has no bfloat16 "
        f"convolution at all (without AVX-512); set "
        f"--{_where(key_prefix, 'conv_backend')}=auto (XLA's convolutions run {dtype}) or "
        f"{fix}")
  try:
    task_lib.build_model(config)
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{_where(key_prefix, 'dtype')} = {dtype!r} does not fit "
                      f"{_where(key_prefix, 'model')} = {config.model!r}: {_first_line(e)}; "
                      f"{fix}") from e


def _check_input_size(config: ml_collections.ConfigDict, key_prefix: str,
                      data_size: int | None = None) -> None:
  """The side of the images the model sees (config.input_size, else config.image_size, else
  `data_size`: the smaller side of the data's images; unknown when all are 0 / None) at least
  the model's smallest (models.min_input_size, e.g. 224 px for VGG's 224 px layout)."""
  key = next((k for k in ("input_size", "image_size") if config.get(k, 0)), None)
  side = config.get(key) if key else data_size
  if side is None:
    return
  model = task_lib.build_model(config)
  smallest = model_min_input_size(model)
  if side >= smallest:
    return
  kwargs = dict(lookup(config, "model_kwargs") or {})
  described = f"{_where(key_prefix, 'model')} = {config.model!r}" + (
      f" with {_where(key_prefix, 'model_kwargs')} = {kwargs}" if kwargs else "")
  seen = (f"{_where(key_prefix, key)} = {side}" if key else
          f"the images of {config.dataset!r} are {side} px a side "
          f"({_where(key_prefix, 'input_size')} = 0 and {_where(key_prefix, 'image_size')} = 0 "
          "keep their size)")
  fix = f"set --{_where(key_prefix, 'input_size')}={smallest} or more (resizes inside the step)"
  if getattr(model, "small_image", True) is False:
    fix += (f" or --{_where(key_prefix, 'model_kwargs.small_image')}=True (the model's layout "
            "for 32 px images)")
  raise ConfigError(f"{seen}, but {described} needs inputs of at least {smallest} px a side "
                    f"(smaller ones leave a feature map smaller than its classifier reads): "
                    f"{fix}")


def _check_softmatch(config: ml_collections.ConfigDict, key_prefix: str) -> None:
  """ssl.algorithm 'softmatch': no ssl.dist_align on top of its own uniform alignment, and at
  least 2 unlabelled images a step (its confidence variance is the unbiased one)."""
  if lookup(config, "ssl.algorithm") != "softmatch":
    return
  dist_align = lookup(config, "ssl.dist_align")
  if dist_align not in (_ABSENT, ""):
    raise ConfigError(
        f"{_where(key_prefix, 'ssl.dist_align')} = {dist_align!r} with "
        f"{_where(key_prefix, 'ssl.algorithm')} = 'softmatch': SoftMatch aligns its weights "
        f"with its own uniform alignment ({_where(key_prefix, 'ssl.softmatch_uniform_align')}"
        f"); set --{_where(key_prefix, 'ssl.dist_align')}=''")
  mu, batch_size = lookup(config, "ssl.mu"), lookup(config, "batch_size")
  if _ABSENT not in (mu, batch_size) and mu * batch_size < 2:
    raise ConfigError(
        f"{_where(key_prefix, 'ssl.mu')} * {_where(key_prefix, 'batch_size')} = "
        f"{mu} * {batch_size} gives 1 unlabelled image a step; "
        f"{_where(key_prefix, 'ssl.algorithm')} = 'softmatch' needs at least 2 (the unbiased "
        "variance of their confidences): raise one of them")


def check_config(config: ml_collections.ConfigDict, key_prefix: str = "") -> None:
  """Refuses a training config with a key whose value no run can use: raises ConfigError
  naming the dotted key (`key_prefix` + key, e.g. 'teacher.num_steps'), its value and the
  allowed values. Pure: reads no data, computes and writes nothing."""
  check_rules(config, TRAINING_RULES, key_prefix)
  if not lookup(config, "dataset"):
    raise ConfigError(f"{_where(key_prefix, 'dataset')} is empty: name the training data, e.g. "
                      "'pkg:digits' or 'npz:PATH' (see effcv_jax/data/sources.py)")
  if lookup(config, "eval_split") == "holdout" and not lookup(config, "num_holdout"):
    raise ConfigError(f"{_where(key_prefix, 'eval_split')} = 'holdout' needs "
                      f"{_where(key_prefix, 'num_holdout')} > 0 (it is "
                      f"{lookup(config, 'num_holdout')!r}): hold out examples to evaluate on, "
                      "or name another eval_split")
  if lookup(config, "optimizer.schedule") == "exponential" and not (
      lookup(config, "optimizer.decay_every_steps") not in (_ABSENT, None)
      and lookup(config, "optimizer.decay_every_steps") > 0):
    raise ConfigError(f"{_where(key_prefix, 'optimizer.schedule')} = 'exponential' needs "
                      f"{_where(key_prefix, 'optimizer.decay_every_steps')} > 0 (it is "
                      f"{lookup(config, 'optimizer.decay_every_steps')!r}): the steps between "
                      "decays, e.g. 2.4 epochs of steps")
  if lookup(config, "host_preprocessing") not in (_ABSENT, "") and not lookup(
      config, "image_size"):
    raise ConfigError(f"{_where(key_prefix, 'host_preprocessing')} = "
                      f"{lookup(config, 'host_preprocessing')!r} needs "
                      f"{_where(key_prefix, 'image_size')} > 0 (it is "
                      f"{lookup(config, 'image_size')!r}): the side of the square images it "
                      "cuts, e.g. 224")
  _check_lr_rules(config, key_prefix)
  _check_augment(config, key_prefix)
  _check_robust_training(config, key_prefix)
  check_rules(config, GAN_AUGMENT_RULES, key_prefix)
  check_rules(config, SSL_RULES, key_prefix)
  _check_softmatch(config, key_prefix)
  _check_augment(config, key_prefix, "ssl.weak_augment")
  _check_augment(config, key_prefix, "ssl.strong_augment")
  _check_model(config, key_prefix)
  _check_advprop_model(config, key_prefix)
  _check_input_size(config, key_prefix)


def _first_line(error: BaseException) -> str:
  """The first non-empty line of an error's message (its type name when it has none)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  return lines[0].rstrip(".") if lines else type(error).__name__


def _abstract_batch(record: dict[str, Any], batch_size: int,
                    mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """A batch of `batch_size` records shaped like `record`, as sharded shape-dtype structs
  (integer and float types as JAX canonicalises them)."""
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {}
  for key, value in record.items():
    value = np.asarray(value)
    batch[key] = jax.ShapeDtypeStruct((batch_size,) + value.shape,
                                      jax.dtypes.canonicalize_dtype(value.dtype),
                                      sharding=batch_sharding)
  return batch


def _describe_batch(batch: dict[str, jax.ShapeDtypeStruct]) -> str:
  return ", ".join(f"{k} {v.dtype}{tuple(v.shape)}" for k, v in batch.items())


def check_mixing_batch(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       key_prefix: str = "") -> None:
  """An augment spec that mixes images of the batch with each other (mixup, cutmix, fmix,
  saliencymix, puzzlemix, ...) needs at least 2 training images per device: raises ConfigError
  naming augment and batch_size otherwise. (A spec that does not parse is check_config's.)"""
  spec, batch_size = lookup(config, "augment"), lookup(config, "batch_size")
  if not isinstance(spec, str) or not _is_int(batch_size) or batch_size < 1:
    return
  try:
    mixing = augment_lib.build(spec).mixing_stages
  except (ValueError, TypeError):
    return
  devices = mesh.devices.size
  if not mixing or batch_size // devices >= 2:
    return
  fitting = 2 * devices
  raise ConfigError(
      f"{_where(key_prefix, 'augment')} = {spec!r} mixes images with each other "
      f"({', '.join(mixing)}), which needs at least 2 training images per device, but "
      f"{_where(key_prefix, 'batch_size')} = {batch_size} over {devices} device(s) gives "
      f"{batch_size // devices}: set --{_where(key_prefix, 'batch_size')}={fitting} or more, "
      f"or drop the mixing op from {_where(key_prefix, 'augment')}")


def _check_eval_images(config: ml_collections.ConfigDict, run_data: run_data_lib.RunData,
                       key_prefix: str) -> None:
  """Evaluation images of the training images' channel count, and of their size unless the
  step resizes both (input_size)."""
  if not len(run_data.eval):
    return
  train_shape = tuple(run_data.image_shape)
  eval_shape = run_data_lib.image_shape_of(run_data.eval)
  same_channels = eval_shape[2:] == train_shape[2:]
  same_size = eval_shape[:2] == train_shape[:2] or bool(config.get("input_size", 0))
  if same_channels and same_size:
    return
  eval_dataset = config.get("eval_dataset", "") or config.dataset
  evaluated = (f"{_where(key_prefix, 'eval_dataset')}={eval_dataset!r} "
               f"{_where(key_prefix, 'eval_split')}={config.eval_split!r}")
  trained = f"{config.dataset!r} [{config.train_split}]"
  if not same_channels:
    fix = (f"evaluate on images with {train_shape[2]} channel(s): choose another "
           f"{_where(key_prefix, 'eval_dataset')} / {_where(key_prefix, 'eval_split')}")
  else:
    fix = (f"set {_where(key_prefix, 'image_size')} (resizes both on the host) or "
           f"{_where(key_prefix, 'input_size')} (resizes both inside the step), or choose "
           f"another {_where(key_prefix, 'eval_dataset')} / {_where(key_prefix, 'eval_split')}")
  raise ConfigError(f"the evaluation images ({evaluated}) have shape {eval_shape}, the "
                    f"training images ({trained}) {train_shape}: the model cannot evaluate "
                    f"them; {fix}")


def _check_channels(config: ml_collections.ConfigDict, channels: int, key_prefix: str) -> None:
  """input_channels repeats grey images only; input_mean and input_std have 1 value or one
  per channel of the model's input."""
  input_channels = config.get("input_channels", 0)
  if input_channels and channels not in (1, input_channels):
    raise ConfigError(
        f"{_where(key_prefix, 'input_channels')} = {input_channels} repeats grey images, but "
        f"the images of {config.dataset!r} have {channels} channels: set it to 0")
  inputs = f"the images of {config.dataset!r}"
  if input_channels and channels == 1:
    channels = input_channels
    inputs = f"the model's inputs ({_where(key_prefix, 'input_channels')})"
  for key in ("input_mean", "input_std"):
    values = tuple(config.get(key, ()))
    if len(values) not in (1, channels):
      fix = "give 1 value" if channels == 1 else f"give 1 value or {channels} (one per channel)"
      raise ConfigError(
          f"{_where(key_prefix, key)} = {values} has {len(values)} values, but {inputs} "
          f"have {channels} channel(s): {fix}")


def trace(what: str, keys: str, function: Callable, *args) -> Any:
  """jax.eval_shape(function, *args); a failure (other than a UserError) becomes a
  ConfigError naming `what` failed, the keys most likely at fault and the error's first line."""
  try:
    return jax.eval_shape(function, *args)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{what} cannot run (traced before training, nothing computed): "
                      f"{type(e).__name__}: {_first_line(e)}. Keys most likely at fault: "
                      f"{keys}") from e


def check_run(config: ml_collections.ConfigDict, run_data: run_data_lib.RunData,
              mesh: jax.sharding.Mesh, *,
              make_step: Callable[[task_lib.Task, jax.sharding.Mesh], Callable],
              make_eval_step: Callable[[task_lib.Task, jax.sharding.Mesh], Callable],
              train_sources: Sequence[pipeline.Source] | None = None,
              key_prefix: str = "") -> None:
  """Refuses a run whose config does not fit its data, before anything is computed or
  written: raises ConfigError.

  Checks that the evaluation images have the training images' shape (see
  _check_eval_images), that input_mean / input_std fit their channel count and that the model
  takes images of their size (_check_input_size); then builds
  the abstract train state (init_task_and_state(..., abstract=True)) and traces
  `make_step(task, mesh)(state, batch)` on a batch structured like the records of
  `train_sources` (default run_data.train: 'image', 'label', and e.g. 'soft_label' where the
  sources carry it; after config.host_preprocessing's record map) and
  `make_eval_step(task, mesh)(variables, batch)` on padded evaluation batches, with
  jax.eval_shape (shapes only).
  """
  image_shape = tuple(run_data.image_shape)
  check_mixing_batch(config, mesh, key_prefix)
  _check_eval_images(config, run_data, key_prefix)
  _check_channels(config, image_shape[-1], key_prefix)
  _check_input_size(config, key_prefix, min(image_shape[:2]))
  model_keys = ", ".join(_where(key_prefix, k) for k in ("model", "model_kwargs", "input_size"))
  try:
    task, state = task_lib.init_task_and_state(config, image_shape, mesh, abstract=True)
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"the model cannot be initialised on images of shape {image_shape} "
                      f"(traced, nothing computed): {type(e).__name__}: {_first_line(e)}. "
                      f"Keys most likely at fault: {model_keys}") from e
  input_keys = ", ".join(_where(key_prefix, k) for k in (
      "input_mean", "input_std", "model_kwargs", "input_size"))
  if len(run_data.eval):
    record = dict(run_data.eval[0])
    eval_batch = _abstract_batch(
        {"image": record["image"], "label": np.int32(0), "mask": np.bool_(True)},
        sharding.padded_batch_size(config.eval_batch_size, mesh), mesh)
    variables = task_lib.eval_variables(state)
    trace(f"the eval step on {_describe_batch(eval_batch)}", input_keys,
           make_eval_step(task, mesh), variables, eval_batch)
  sources = list(train_sources) if train_sources else [run_data.train]
  if all(len(source) for source in sources):
    record = dict(sources[0][0])
    record_map = run_data_lib.train_record_map(config)
    if record_map is not None:   # the record as the train iterator yields it
      record = record_map(record, np.random.default_rng(0))
    train_batch = _abstract_batch(record, config.batch_size, mesh)
    train_keys = ", ".join(_where(key_prefix, k) for k in (
        "augment", "input_mean", "input_std", "model_kwargs", "input_size", "label_smoothing",
        "optimizer"))
    trace(f"the train step on {_describe_batch(train_batch)}", train_keys,
           make_step(task, mesh), state, train_batch)
