"""Semi-supervised losses as pure functions of the model's outputs and an algorithm state.

Every algorithm is `loss_fn(settings, outputs, state) -> (loss, new_state, metrics)`:

* `outputs` (`Outputs`): logits on the labelled batch (B, K) with its int labels (B,), on the
  weak view (U, K) and on the strong view (U, K) of the unlabelled batch (U = mu * B), and
  each unlabelled example's index in the unlabelled set (U,) (FlexMatch's memory);
* `state`: the algorithm's state pytree (`init_state`): a step counter and, per algorithm,
  the Mean Teacher's EMA parameters, FlexMatch's per-example prediction memory, FreeMatch's
  EMA thresholds, and the distribution-alignment running means;
* the loss is sup_loss + weight * unsup_loss (+ FreeMatch's fairness term), differentiable
  through the labelled logits and the logits the unlabelled loss trains (the strong view; the
  weak view for Pseudo-Label); targets are cut from the gradient.

Unlabelled losses are means over all U examples of mask * per-example loss (examples below
the threshold count as zeros, as in FixMatch's L_u), not means over the masked ones.

The algorithms (defaults in PAPER_DEFAULTS, the USB benchmark's settings for classic CV):

* 'supervised': cross-entropy on the labelled batch only.
* 'pseudo_label' (Lee 2013): hard labels argmax p(weak) where max p >= threshold, trained on
  the same weak-view logits; lambda_u ramps linearly from 0 over unsup_warmup * num_steps.
* 'mean_teacher' (Tarvainen & Valpola 2017): MSE between softmax(student on the strong view)
  and softmax(teacher on the weak view), averaged over classes; the teacher's parameters are
  an EMA (ema_m) of the student's, kept in this state and updated after each optimiser step
  (`update_teacher`); lambda_u ramps as for Pseudo-Label. It is the update of a weight EMA
  for evaluation, kept apart from one: its decay is the algorithm's (USB shares one EMA).
* 'uda' (Xie et al. 2020): targets p(weak)^(1/T) renormalised (= softmax(logits / T)), mask
  max p(weak) >= threshold, KL(targets || p(strong)) (the same gradient as the cross-entropy
  USB uses; the values differ by the targets' entropy).
* 'fixmatch' (Sohn et al. 2020): hard labels argmax p(weak) where max p >= threshold (0.95),
  cross-entropy on the strong view.
* 'flexmatch' (Zhang et al. 2021): FixMatch with class-wise thresholds
  threshold * M(beta_c), M(x) = x / (2 - x), beta_c = sigma_c / max(max_c' sigma_c', N_unused)
  with warm-up (without: / max_c' sigma_c'), sigma_c = the unlabelled examples whose latest
  prediction above `threshold` was class c (a memory of num_unlabelled predictions, -1 unused).
  beta is computed after each batch's memory update and used by the next batch.
* 'freematch' (Wang et al. 2023): self-adaptive thresholds, updated by each batch before its
  mask: global tau = EMA of the mean max p(weak), local p~ = EMA of mean p(weak), label
  histogram h~ = EMA of the histogram of argmax p(weak) (all started at 1/K); mask
  max p >= tau * p~[c] / max p~; plus lambda_fairness * L_f with
  L_f = -H(SumNorm(p~ / h~), SumNorm(pbar / hbar)) (pbar, hbar: mean probability and
  prediction histogram of the masked strong-view outputs; 0 when nothing is masked in).
* 'softmatch' (Chen et al. 2023): hard labels argmax p(weak), CE on the strong view, each
  example weighted by the truncated Gaussian lambda(p) = exp(-(min(max p - mu, 0))^2 /
  (2 sigma^2 / n^2)) (1 at or above mu; n = softmatch_n_sigma, 1 is the paper's equation,
  2 its reference code's default), mu and sigma^2 the EMA (softmatch_ema) of each batch's mean
  and unbiased variance of max p (started at 1/K and 1), updated by each batch before its
  weights. Uniform alignment (softmatch_uniform_align) computes the weights from
  Normalise(p / p_model) (p_model: the EMA of the mean p(weak), started at the first batch's
  mean); the pseudo-labels stay argmax of the unaligned p.

Distribution alignment (ReMixMatch; `dist_align` 'uniform' or 'labelled', any algorithm but
'supervised'): p(weak) <- Normalise(p * (p_target + 1e-6) / (p_model + 1e-6)), p_model the EMA
(dist_align_m) of the mean p(weak), p_target uniform or the EMA of the labelled batches'
one-hot labels; both start at their first batch's mean. Targets and masks use the aligned p.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp

from effcv_jax import losses

ALGORITHMS = ("supervised", "pseudo_label", "mean_teacher", "uda", "fixmatch", "flexmatch",
              "freematch", "softmatch")
DIST_ALIGN_TARGETS = ("", "uniform", "labelled")

# Each algorithm's settings in USB's classic-CV benchmark (which follows the papers):
# lambda_u, threshold (p_cutoff), temperature (T), unsup_warmup. Keys not named keep the
# config's values.
PAPER_DEFAULTS: dict[str, dict[str, Any]] = {
    "supervised": dict(lambda_u=0.0),
    "pseudo_label": dict(lambda_u=1.0, threshold=0.95, unsup_warmup=0.4),
    "mean_teacher": dict(lambda_u=50.0, unsup_warmup=0.4, ema_m=0.999),
    "uda": dict(lambda_u=1.0, threshold=0.8, temperature=0.4),
    "fixmatch": dict(lambda_u=1.0, threshold=0.95, temperature=1.0),
    "flexmatch": dict(lambda_u=1.0, threshold=0.95, temperature=1.0, flex_warmup=True),
    "freematch": dict(lambda_u=1.0, lambda_fairness=0.01, freematch_ema=0.999),
    "softmatch": dict(lambda_u=1.0, softmatch_ema=0.999, softmatch_n_sigma=2.0,
                      softmatch_uniform_align=True),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """An algorithm's static hyperparameters (hashable: a jitted step closes over them).

  algorithm: one of ALGORITHMS. lambda_u: weight of the unlabelled loss. threshold: the
  confidence cut-off of the pseudo-labels (FlexMatch: the class-wise thresholds' maximum).
  temperature: UDA's sharpening T. unsup_warmup: Pseudo-Label's and Mean Teacher's linear
  ramp of lambda_u, as a fraction of num_steps. ema_m: the Mean Teacher's EMA decay.
  flex_warmup: FlexMatch's threshold warm-up. num_unlabelled: the size of the unlabelled set
  (FlexMatch's memory). freematch_ema, lambda_fairness: FreeMatch's EMA decay and fairness
  weight. softmatch_ema, softmatch_n_sigma, softmatch_uniform_align: SoftMatch's EMA decay
  (of the Gaussian's mean and variance and of uniform alignment's p_model), the Gaussian's
  width divisor n (sigma / n) and uniform alignment on or off. dist_align: '' (off),
  'uniform' or 'labelled' target; dist_align_m its EMA decay. label_smoothing: of the
  labelled targets.
  """
  algorithm: str = "fixmatch"
  num_classes: int = 10
  lambda_u: float = 1.0
  threshold: float = 0.95
  temperature: float = 1.0
  unsup_warmup: float = 0.4
  num_steps: int = 1
  ema_m: float = 0.999
  flex_warmup: bool = True
  num_unlabelled: int = 0
  freematch_ema: float = 0.999
  lambda_fairness: float = 0.01
  softmatch_ema: float = 0.999
  softmatch_n_sigma: float = 2.0
  softmatch_uniform_align: bool = True
  dist_align: str = ""
  dist_align_m: float = 0.999
  label_smoothing: float = 0.0

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f"unknown semi-supervised algorithm {self.algorithm!r}; valid: "
                       f"{', '.join(ALGORITHMS)}")
    if self.dist_align not in DIST_ALIGN_TARGETS:
      raise ValueError(f"dist_align must be one of {DIST_ALIGN_TARGETS}, not {self.dist_align!r}")
    if self.algorithm == "flexmatch" and self.num_unlabelled < 1:
      raise ValueError("flexmatch needs num_unlabelled >= 1 (the size of its prediction memory)")
    if self.algorithm == "softmatch" and self.dist_align:
      raise ValueError("softmatch aligns its weights with its own uniform alignment "
                       "(softmatch_uniform_align); dist_align must be ''")


@flax.struct.dataclass
class Outputs:
  """What a loss reads: logits_labelled (B, K), labels int (B,), logits_weak (U, K),
  logits_strong (U, K) (U = 0 rows where an algorithm needs no such view) and
  unlabelled_index int (U,), each unlabelled example's position in the unlabelled set."""
  logits_labelled: jax.Array
  labels: jax.Array
  logits_weak: jax.Array
  logits_strong: jax.Array
  unlabelled_index: jax.Array


def init_state(settings: Settings, params: Any = None) -> dict[str, Any]:
  """The algorithm's initial state: {'step': int32 0} plus 'teacher' (a copy of `params`,
  Mean Teacher), 'flexmatch' {'selected': int32 (N,) all -1, 'classwise_acc': (K,) zeros},
  'freematch' {'global_threshold': 1/K, 'p_model': (K,) 1/K, 'label_hist': (K,) 1/K},
  'softmatch' {'mean': 1/K, 'variance': 1, 'uniform_align': the 'dist_align' state},
  'dist_align' {'p_model', 'p_target': (K,) 1/K, 'count': int32 0} as the settings need."""
  k = settings.num_classes

  def uniform():  # a new buffer each time: a jitted step donates the state's arrays
    return jnp.full((k,), 1.0 / k, jnp.float32)

  state: dict[str, Any] = {"step": jnp.zeros((), jnp.int32)}
  if settings.algorithm == "mean_teacher":
    if params is None:
      raise ValueError("mean_teacher's state needs the initial params (the teacher's start)")
    state["teacher"] = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
  if settings.algorithm == "flexmatch":
    state["flexmatch"] = {"selected": jnp.full((settings.num_unlabelled,), -1, jnp.int32),
                          "classwise_acc": jnp.zeros((k,), jnp.float32)}
  if settings.algorithm == "freematch":
    state["freematch"] = {"global_threshold": jnp.asarray(1.0 / k, jnp.float32),
                          "p_model": uniform(), "label_hist": uniform()}
  if settings.algorithm == "softmatch":
    state["softmatch"] = {"mean": jnp.asarray(1.0 / k, jnp.float32),
                          "variance": jnp.ones((), jnp.float32),
                          "uniform_align": {"p_model": uniform(), "p_target": uniform(),
                                            "count": jnp.zeros((), jnp.int32)}}
  if settings.dist_align and settings.algorithm != "supervised":
    state["dist_align"] = {"p_model": uniform(), "p_target": uniform(),
                           "count": jnp.zeros((), jnp.int32)}
  return state


# ---------------------------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------------------------


def supervised_loss(settings: Settings, outputs: Outputs) -> jax.Array:
  """Mean cross-entropy of the labelled logits with the (smoothed) one-hot labels."""
  targets = losses.smooth_labels(jax.nn.one_hot(outputs.labels, settings.num_classes),
                                 settings.label_smoothing)
  return jnp.mean(losses.softmax_cross_entropy(outputs.logits_labelled, targets))


def ramp_weight(settings: Settings, step: jax.Array) -> jax.Array:
  """lambda_u * clip(step / (unsup_warmup * num_steps), 0, 1); lambda_u when there is no
  warm-up."""
  span = settings.unsup_warmup * settings.num_steps
  if span <= 0:
    return jnp.asarray(settings.lambda_u, jnp.float32)
  return settings.lambda_u * jnp.clip(step.astype(jnp.float32) / span, 0.0, 1.0)


def hard_label_loss(logits: jax.Array, pseudo_labels: jax.Array, mask: jax.Array) -> jax.Array:
  """mean over the U examples of mask * CE(logits, one_hot(pseudo_labels)). (U, K), (U,), (U,)."""
  targets = jax.nn.one_hot(pseudo_labels, logits.shape[-1])
  return jnp.mean(mask * losses.softmax_cross_entropy(logits, targets))


def sharpen(probs: jax.Array, temperature: float) -> jax.Array:
  """p^(1/T) renormalised per row (softmax(logits / T) when p = softmax(logits)). (U, K)."""
  log_p = jnp.log(jnp.maximum(probs, 1e-30)) / temperature
  return jax.nn.softmax(log_p, axis=-1)


def distribution_alignment(probs: jax.Array, labels_one_hot: jax.Array, state: dict[str, Any],
                           target: str, momentum: float) -> tuple[jax.Array, dict[str, Any]]:
  """ReMixMatch's distribution alignment: updates the running means with this batch (its
  first batch sets them), then returns p * (p_target + 1e-6) / (p_model + 1e-6) renormalised.

  probs (U, K) unlabelled predictions; labels_one_hot (B, K) of the labelled batch (read for
  target 'labelled'); state {'p_model', 'p_target' (K,), 'count'}. Returns (aligned (U, K),
  new state)."""
  first = state["count"] == 0

  def running(old, batch_mean):
    return jnp.where(first, batch_mean, momentum * old + (1.0 - momentum) * batch_mean)

  p_model = running(state["p_model"], jnp.mean(probs, axis=0))
  p_target = state["p_target"]
  if target == "labelled":
    p_target = running(p_target, jnp.mean(labels_one_hot.astype(jnp.float32), axis=0))
  aligned = probs * (p_target + 1e-6) / (p_model + 1e-6)
  aligned = aligned / jnp.sum(aligned, axis=-1, keepdims=True)
  return aligned, {"p_model": p_model, "p_target": p_target, "count": state["count"] + 1}


def weak_probs(settings: Settings, outputs: Outputs,
               state: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
  """softmax of the weak view's logits, cut from the gradient, float32, distribution-aligned
  when settings.dist_align is set; returns (probs (U, K), state with 'dist_align' updated)."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(outputs.logits_weak).astype(jnp.float32), -1)
  if not settings.dist_align:
    return probs, state
  labels = jax.nn.one_hot(outputs.labels, settings.num_classes)
  probs, aligned_state = distribution_alignment(probs, labels, state["dist_align"],
                                                settings.dist_align, settings.dist_align_m)
  return probs, {**state, "dist_align": aligned_state}


def _finish(settings: Settings, outputs: Outputs, state: dict[str, Any], unsup: jax.Array,
            weight: jax.Array, mask: jax.Array, extra_loss: jax.Array | float = 0.0,
            metrics: dict[str, jax.Array] | None = None):
  """loss = sup + weight * unsup + extra; the step counter advanced; the shared metrics."""
  sup = supervised_loss(settings, outputs)
  loss = sup + weight * unsup + extra_loss
  all_metrics = {"sup_loss": sup, "unsup_loss": unsup, "unsup_weight": jnp.asarray(weight),
                 "mask_rate": jnp.mean(mask.astype(jnp.float32)), **(metrics or {})}
  return loss, {**state, "step": state["step"] + 1}, all_metrics


# ---------------------------------------------------------------------------------------------
# The algorithms.
# ---------------------------------------------------------------------------------------------


def supervised(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """Labels only: the cross-entropy of the labelled batch; the unlabelled views are unread."""
  zero = jnp.zeros((), jnp.float32)
  return _finish(settings, outputs, state, zero, zero, zero)


def pseudo_label(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """Pseudo-Label: CE of the weak-view logits with their own confident argmax, ramped."""
  probs, state = weak_probs(settings, outputs, state)
  confidence, labels = jnp.max(probs, -1), jnp.argmax(probs, -1)
  mask = (confidence >= settings.threshold).astype(jnp.float32)
  unsup = hard_label_loss(outputs.logits_weak, labels, mask)
  return _finish(settings, outputs, state, unsup, ramp_weight(settings, state["step"]), mask)


def mean_teacher(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """Mean Teacher: mean squared difference of softmax(strong) and softmax(teacher's weak view)
  (logits_weak come from the teacher), ramped."""
  targets, state = weak_probs(settings, outputs, state)
  student = jax.nn.softmax(outputs.logits_strong.astype(jnp.float32), -1)
  unsup = jnp.mean(jnp.square(student - targets))
  mask = jnp.ones(targets.shape[:1], jnp.float32)
  return _finish(settings, outputs, state, unsup, ramp_weight(settings, state["step"]), mask)


def uda(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """UDA: KL(sharpened p(weak) || p(strong)) where max p(weak) >= threshold."""
  probs, state = weak_probs(settings, outputs, state)
  mask = (jnp.max(probs, -1) >= settings.threshold).astype(jnp.float32)
  targets = sharpen(probs, settings.temperature)
  unsup = jnp.mean(mask * losses.kl_divergence(targets, outputs.logits_strong))
  return _finish(settings, outputs, state, unsup, settings.lambda_u, mask)


def fixmatch(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """FixMatch: CE of the strong view with argmax p(weak) where max p(weak) >= threshold."""
  probs, state = weak_probs(settings, outputs, state)
  mask = (jnp.max(probs, -1) >= settings.threshold).astype(jnp.float32)
  unsup = hard_label_loss(outputs.logits_strong, jnp.argmax(probs, -1), mask)
  return _finish(settings, outputs, state, unsup, settings.lambda_u, mask)


def flexmatch_classwise_acc(selected: jax.Array, previous: jax.Array, num_classes: int,
                            warmup: bool) -> jax.Array:
  """FlexMatch's learning effect beta (K,) from the memory `selected` (N,) (class or -1):
  sigma_c / max(max_c sigma_c, N_unused) with warm-up, sigma_c / max_c sigma_c without;
  `previous` unchanged while one value fills the whole memory (e.g. nothing selected yet)."""
  counts = jnp.bincount(selected + 1, length=num_classes + 1).astype(jnp.float32)
  sigma = counts[1:]
  denominator = jnp.max(counts) if warmup else jnp.max(sigma)
  acc = sigma / jnp.maximum(denominator, 1.0)
  return jnp.where(jnp.max(counts) < selected.shape[0], acc, previous)


def flexmatch(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """FlexMatch: FixMatch with the class-wise thresholds threshold * beta_c / (2 - beta_c)."""
  probs, state = weak_probs(settings, outputs, state)
  confidence, labels = jnp.max(probs, -1), jnp.argmax(probs, -1)
  flex = state["flexmatch"]
  beta = flex["classwise_acc"][labels]
  thresholds = settings.threshold * beta / (2.0 - beta)
  mask = (confidence >= thresholds).astype(jnp.float32)
  unsup = hard_label_loss(outputs.logits_strong, labels, mask)
  index = outputs.unlabelled_index
  confident = confidence >= settings.threshold
  selected = flex["selected"].at[index].set(
      jnp.where(confident, labels, flex["selected"][index]).astype(jnp.int32))
  acc = flexmatch_classwise_acc(selected, flex["classwise_acc"], settings.num_classes,
                                settings.flex_warmup)
  state = {**state, "flexmatch": {"selected": selected, "classwise_acc": acc}}
  class_thresholds = settings.threshold * acc / (2.0 - acc)
  return _finish(settings, outputs, state, unsup, settings.lambda_u, mask,
                 metrics={"threshold_mean": jnp.mean(class_thresholds)})


def freematch_update(stats: dict[str, jax.Array], probs: jax.Array,
                     momentum: float) -> dict[str, jax.Array]:
  """FreeMatch's EMA of the global threshold (mean max p), the class-wise mean p and the
  histogram of argmax p, with this batch's probs (U, K)."""
  histogram = jnp.mean(jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1]), axis=0)

  def ema(old, new):
    return momentum * old + (1.0 - momentum) * new

  return {"global_threshold": ema(stats["global_threshold"], jnp.mean(jnp.max(probs, -1))),
          "p_model": ema(stats["p_model"], jnp.mean(probs, axis=0)),
          "label_hist": ema(stats["label_hist"], histogram)}


def _inverse_or_zero(values: jax.Array) -> jax.Array:
  """1 / values where values > 0, else 0."""
  positive = values > 0
  return jnp.where(positive, 1.0 / jnp.where(positive, values, 1.0), 0.0)


def _sum_normalise(values: jax.Array) -> jax.Array:
  total = jnp.sum(values)
  return values / jnp.where(total > 0, total, 1.0)


def freematch_fairness(mask: jax.Array, logits_strong: jax.Array, p_model: jax.Array,
                       label_hist: jax.Array) -> jax.Array:
  """FreeMatch's fairness term L_f = sum SumNorm(p~ / h~) * log(SumNorm(pbar / hbar) + 1e-12)
  over the masked strong-view outputs (0 when mask is all zero). (U,), (U, K), (K,), (K,)."""
  probs = jax.nn.softmax(logits_strong.astype(jnp.float32), -1)
  count = jnp.sum(mask)
  safe_count = jnp.maximum(count, 1.0)
  histogram = jnp.sum(mask[:, None] * jax.nn.one_hot(jnp.argmax(probs, -1), probs.shape[-1]),
                      axis=0) / safe_count
  mean_prob = jnp.sum(mask[:, None] * probs, axis=0) / safe_count
  model_term = _sum_normalise(p_model * _inverse_or_zero(label_hist))
  batch_term = _sum_normalise(mean_prob * jax.lax.stop_gradient(_inverse_or_zero(histogram)))
  loss = jnp.sum(jax.lax.stop_gradient(model_term) * jnp.log(batch_term + 1e-12))
  return jnp.where(count > 0, loss, 0.0)


def freematch(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """FreeMatch: self-adaptive thresholds (updated with this batch first), hard pseudo-labels on
  the strong view, and lambda_fairness * the fairness term."""
  probs, state = weak_probs(settings, outputs, state)
  stats = freematch_update(state["freematch"], probs, settings.freematch_ema)
  confidence, labels = jnp.max(probs, -1), jnp.argmax(probs, -1)
  local = stats["p_model"] / jnp.max(stats["p_model"])
  mask = (confidence >= stats["global_threshold"] * local[labels]).astype(jnp.float32)
  unsup = hard_label_loss(outputs.logits_strong, labels, mask)
  fairness = freematch_fairness(mask, outputs.logits_strong, stats["p_model"],
                                stats["label_hist"])
  state = {**state, "freematch": stats}
  return _finish(settings, outputs, state, unsup, settings.lambda_u, mask,
                 extra_loss=settings.lambda_fairness * fairness,
                 metrics={"fairness_loss": fairness,
                          "global_threshold": stats["global_threshold"]})


def softmatch_update(stats: dict[str, jax.Array], confidence: jax.Array,
                     momentum: float) -> dict[str, jax.Array]:
  """SoftMatch's EMA of the mean and the unbiased variance of this batch's confidences
  (max p, (U,), U >= 2); stats {'mean', 'variance'} scalars, the other keys kept."""
  count = confidence.shape[0]
  if count < 2:
    raise ValueError(f"softmatch needs at least 2 unlabelled examples a step (an unbiased "
                     f"variance), got {count}")
  batch_mean = jnp.mean(confidence)
  batch_variance = jnp.sum(jnp.square(confidence - batch_mean)) / (count - 1)
  return {**stats, "mean": momentum * stats["mean"] + (1.0 - momentum) * batch_mean,
          "variance": momentum * stats["variance"] + (1.0 - momentum) * batch_variance}


def truncated_gaussian_weight(confidence: jax.Array, mean: jax.Array, variance: jax.Array,
                              n_sigma: float) -> jax.Array:
  """SoftMatch's weights exp(-(min(confidence - mean, 0))^2 / (2 variance / n_sigma^2)):
  1 at or above the mean. confidence (U,), mean and variance scalars; returns (U,)."""
  below = jnp.minimum(confidence - mean, 0.0)
  scale = 2.0 * jnp.maximum(variance, 1e-12) / n_sigma ** 2
  return jnp.exp(-jnp.square(below) / scale)


def softmatch(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """SoftMatch: CE of the strong view with argmax p(weak), each example weighted by the
  truncated Gaussian of its (uniformly aligned) confidence, after this batch's EMA update."""
  probs, state = weak_probs(settings, outputs, state)
  stats = state["softmatch"]
  weighted = probs
  if settings.softmatch_uniform_align:
    weighted, aligned = distribution_alignment(probs, probs[:0], stats["uniform_align"],
                                               "uniform", settings.softmatch_ema)
    stats = {**stats, "uniform_align": aligned}
  confidence = jnp.max(weighted, -1)
  stats = softmatch_update(stats, confidence, settings.softmatch_ema)
  weight = truncated_gaussian_weight(confidence, stats["mean"], stats["variance"],
                                     settings.softmatch_n_sigma)
  unsup = hard_label_loss(outputs.logits_strong, jnp.argmax(probs, -1), weight)
  state = {**state, "softmatch": stats}
  return _finish(settings, outputs, state, unsup, settings.lambda_u, weight,
                 metrics={"confidence_mean": stats["mean"],
                          "confidence_variance": stats["variance"]})


LossFn = Callable[[Settings, Outputs, dict[str, Any]],
                  tuple[jax.Array, dict[str, Any], dict[str, jax.Array]]]
LOSSES: dict[str, LossFn] = {
    "supervised": supervised, "pseudo_label": pseudo_label, "mean_teacher": mean_teacher,
    "uda": uda, "fixmatch": fixmatch, "flexmatch": flexmatch, "freematch": freematch,
    "softmatch": softmatch,
}
# The views of the unlabelled batch each algorithm's step computes: 'weak' the weak view's
# logits (the teacher's for Mean Teacher), 'strong' the strong view's.
VIEWS: dict[str, tuple[str, ...]] = {
    "supervised": (), "pseudo_label": ("weak",), "mean_teacher": ("weak", "strong"),
    "uda": ("weak", "strong"), "fixmatch": ("weak", "strong"),
    "flexmatch": ("weak", "strong"), "freematch": ("weak", "strong"),
    "softmatch": ("weak", "strong"),
}


def ssl_loss(settings: Settings, outputs: Outputs, state: dict[str, Any]):
  """settings.algorithm's loss: (loss, new state, metrics {'sup_loss', 'unsup_loss',
  'unsup_weight', 'mask_rate', ...})."""
  return LOSSES[settings.algorithm](settings, outputs, state)


def update_teacher(state: dict[str, Any], params: Any, momentum: float) -> dict[str, Any]:
  """Mean Teacher's EMA after an optimiser step: teacher <- m * teacher + (1 - m) * params."""
  teacher = jax.tree.map(lambda t, p: momentum * t + (1.0 - momentum) * p,
                         state["teacher"], params)
  return {**state, "teacher": teacher}


def settings_from_config(config: Any, num_unlabelled: int = 0) -> Settings:
  """The Settings of config.ssl (configs/common.py), with config.num_classes,
  config.num_steps and config.label_smoothing; num_unlabelled: the unlabelled set's size."""
  ssl = config.ssl
  return Settings(
      algorithm=ssl.algorithm, num_classes=config.num_classes, lambda_u=float(ssl.lambda_u),
      threshold=float(ssl.threshold), temperature=float(ssl.temperature),
      unsup_warmup=float(ssl.unsup_warmup), num_steps=int(config.num_steps),
      ema_m=float(ssl.ema_m), flex_warmup=bool(ssl.flex_warmup), num_unlabelled=num_unlabelled,
      freematch_ema=float(ssl.freematch_ema), lambda_fairness=float(ssl.lambda_fairness),
      softmatch_ema=float(ssl.softmatch_ema), softmatch_n_sigma=float(ssl.softmatch_n_sigma),
      softmatch_uniform_align=bool(ssl.softmatch_uniform_align),
      dist_align=ssl.dist_align, dist_align_m=float(ssl.dist_align_m),
      label_smoothing=float(config.get("label_smoothing", 0.0)))
