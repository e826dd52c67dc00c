"""The semi-supervised losses (effcv_jax/ssl/algorithms.py) against hand-worked numbers and
NumPy references; their preflight rules."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_tiny
from effcv_jax import preflight
from effcv_jax.errors import ConfigError
from effcv_jax.ssl import algorithms

# Two labelled examples (K = 3): p = [0.8, 0.1, 0.1] with label 0, [0.25, 0.5, 0.25] with
# label 1: sup_loss = (-log 0.8 - log 0.5) / 2.
LABELLED_PROBS = np.array([[0.8, 0.1, 0.1], [0.25, 0.5, 0.25]])
LABELS = np.array([0, 1])
SUP_LOSS = (-math.log(0.8) - math.log(0.5)) / 2
# Two unlabelled examples: the weak view's p is confident (0.96 >= 0.95) for the first only.
WEAK_PROBS = np.array([[0.96, 0.02, 0.02], [0.5, 0.3, 0.2]])
STRONG_PROBS = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])


def _outputs(weak=WEAK_PROBS, strong=STRONG_PROBS, labelled=LABELLED_PROBS, labels=LABELS,
             index=None):
  """Outputs whose logits are log-probabilities (softmax gives the probabilities back)."""
  weak, strong = np.asarray(weak, np.float32), np.asarray(strong, np.float32)
  index = np.arange(len(weak)) if index is None else np.asarray(index)
  return algorithms.Outputs(
      logits_labelled=jnp.log(jnp.asarray(labelled, jnp.float32)),
      labels=jnp.asarray(labels, jnp.int32), logits_weak=jnp.log(jnp.asarray(weak)),
      logits_strong=jnp.log(jnp.asarray(strong)), unlabelled_index=jnp.asarray(index, jnp.int32))


def _run(settings, outputs, state=None):
  state = algorithms.init_state(settings) if state is None else state
  return algorithms.ssl_loss(settings, outputs, state)


def test_supervised_reads_only_the_labelled_batch():
  settings = algorithms.Settings(algorithm="supervised", num_classes=3)
  loss, state, metrics = _run(settings, _outputs())
  np.testing.assert_allclose(loss, SUP_LOSS, rtol=1e-6)
  assert float(metrics["unsup_loss"]) == 0.0 and int(state["step"]) == 1


def test_fixmatch_hard_label_above_threshold_trains_the_strong_view():
  settings = algorithms.Settings(algorithm="fixmatch", num_classes=3, threshold=0.95)
  loss, _, metrics = _run(settings, _outputs())
  # Only the first example is confident: label 0, CE of the strong view = -log 0.5; the mean
  # is over both unlabelled examples.
  unsup = -math.log(0.5) / 2
  np.testing.assert_allclose(metrics["mask_rate"], 0.5)
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-6)
  np.testing.assert_allclose(loss, SUP_LOSS + unsup, rtol=1e-6)
  # lambda_u scales the unlabelled part only.
  loss3, _, _ = _run(algorithms.Settings(algorithm="fixmatch", num_classes=3, lambda_u=3.0),
                     _outputs())
  np.testing.assert_allclose(loss3, SUP_LOSS + 3 * unsup, rtol=1e-6)


def test_fixmatch_gradient_reaches_the_strong_view_but_not_the_targets():
  settings = algorithms.Settings(algorithm="fixmatch", num_classes=3)
  outputs = _outputs()

  def loss_of(weak, strong):
    return _run(settings, outputs.replace(logits_weak=weak, logits_strong=strong))[0]

  grad_weak, grad_strong = jax.grad(loss_of, argnums=(0, 1))(outputs.logits_weak,
                                                             outputs.logits_strong)
  assert float(jnp.abs(grad_weak).sum()) == 0.0
  # d/dz CE(z, onehot(0)) / U = (softmax(z) - onehot) / 2 for the masked-in row, 0 for the other.
  expected = np.array([[0.5 - 1, 0.25, 0.25], [0, 0, 0]]) / 2
  np.testing.assert_allclose(grad_strong, expected, atol=1e-6)


def test_pseudo_label_trains_the_weak_view_with_a_ramped_weight():
  settings = algorithms.Settings(algorithm="pseudo_label", num_classes=3, threshold=0.95,
                                 lambda_u=2.0, unsup_warmup=0.4, num_steps=100)
  state = algorithms.init_state(settings)
  unsup = -math.log(0.96) / 2
  loss, _, metrics = _run(settings, _outputs(), state)
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  np.testing.assert_allclose(loss, SUP_LOSS, rtol=1e-6)  # weight 0 at step 0
  state = {**state, "step": jnp.asarray(10, jnp.int32)}  # 10 / (0.4 * 100) of the ramp
  loss, _, metrics = _run(settings, _outputs(), state)
  np.testing.assert_allclose(metrics["unsup_weight"], 2.0 * 0.25)
  np.testing.assert_allclose(loss, SUP_LOSS + 0.5 * unsup, rtol=1e-5)
  state = {**state, "step": jnp.asarray(70, jnp.int32)}
  np.testing.assert_allclose(_run(settings, _outputs(), state)[2]["unsup_weight"], 2.0)
  grad = jax.grad(lambda w: _run(settings, _outputs().replace(logits_weak=w), state)[0])(
      _outputs().logits_weak)
  np.testing.assert_allclose(grad[0], 2.0 * (WEAK_PROBS[0] - [1, 0, 0]) / 2, atol=1e-6)


def test_mean_teacher_mse_of_softmaxes_and_ema_update():
  settings = algorithms.Settings(algorithm="mean_teacher", num_classes=3, lambda_u=50.0,
                                 unsup_warmup=0.0, ema_m=0.9)
  params = {"w": jnp.asarray([1.0, 2.0])}
  state = algorithms.init_state(settings, params)
  loss, new_state, metrics = algorithms.ssl_loss(settings, _outputs(), state)
  unsup = np.mean((STRONG_PROBS - WEAK_PROBS) ** 2)
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  np.testing.assert_allclose(loss, SUP_LOSS + 50.0 * unsup, rtol=1e-5)
  updated = algorithms.update_teacher(new_state, {"w": jnp.asarray([3.0, 0.0])}, 0.9)
  np.testing.assert_allclose(updated["teacher"]["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.0])


def test_uda_sharpened_targets_confidence_mask_and_kl():
  settings = algorithms.Settings(algorithm="uda", num_classes=3, threshold=0.8,
                                 temperature=0.4)
  loss, _, metrics = _run(settings, _outputs())
  target = WEAK_PROBS[0] ** 2.5 / np.sum(WEAK_PROBS[0] ** 2.5)
  # 0.96^2.5 = 0.902961, 0.02^2.5 = 5.657e-5: the sharpened target is almost one-hot.
  np.testing.assert_allclose(target[0], 0.902961 / (0.902961 + 2 * 5.65685e-5), rtol=1e-5)
  kl = np.sum(target * (np.log(target) - np.log(STRONG_PROBS[0])))
  np.testing.assert_allclose(metrics["mask_rate"], 0.5)
  np.testing.assert_allclose(metrics["unsup_loss"], kl / 2, rtol=1e-5)
  np.testing.assert_allclose(loss, SUP_LOSS + kl / 2, rtol=1e-5)


def _flexmatch_reference(batches, num_unlabelled, num_classes, threshold, warmup):
  """FlexMatch in plain Python (the paper's Counter form): masks per batch and the final
  class-wise thresholds."""
  selected = [-1] * num_unlabelled
  acc = [0.0] * num_classes
  masks = []
  for probs, index in batches:
    mask = []
    for p, i in zip(probs, index):
      c = int(np.argmax(p))
      mask.append(float(p[c] >= threshold * acc[c] / (2 - acc[c])))
      if p[c] >= threshold:
        selected[i] = c
    masks.append(mask)
    counts = collections.Counter(selected)
    if max(counts.values()) < num_unlabelled:
      denominator = (max(counts.values()) if warmup else
                     max(v for k, v in counts.items() if k != -1))
      acc = [counts[c] / denominator for c in range(num_classes)]
  return masks, [threshold * a / (2 - a) for a in acc]


def test_flexmatch_classwise_thresholds_by_hand():
  settings = algorithms.Settings(algorithm="flexmatch", num_classes=3, threshold=0.95,
                                 num_unlabelled=4)
  state = algorithms.init_state(settings)
  confident = [[0.97, 0.02, 0.01]] * 3
  # Nothing learnt yet: every threshold is 0 and every example counts.
  _, state, metrics = _run(settings, _outputs(weak=confident, strong=confident,
                                              index=[0, 1, 2]), state)
  np.testing.assert_allclose(metrics["mask_rate"], 1.0)
  # Memory [0, 0, 0, -1]: sigma = (3, 0, 0), 1 unused: beta = 3 / max(3, 1) = (1, 0, 0).
  np.testing.assert_array_equal(state["flexmatch"]["selected"], [0, 0, 0, -1])
  np.testing.assert_allclose(state["flexmatch"]["classwise_acc"], [1.0, 0.0, 0.0])
  # Class 0 now needs 0.95 * 1 / (2 - 1) = 0.95; class 1 still 0.
  weak = [[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]
  _, state, metrics = _run(settings, _outputs(weak=weak, strong=weak, index=[3, 0]), state)
  np.testing.assert_allclose(metrics["mask_rate"], 0.5)
  np.testing.assert_array_equal(state["flexmatch"]["selected"], [0, 0, 0, -1])


def test_flexmatch_warmup_counts_the_unused_examples():
  confident = [[0.97, 0.02, 0.01]]
  for warmup, expected in ((True, [1 / 3, 0, 0]), (False, [1.0, 0, 0])):
    settings = algorithms.Settings(algorithm="flexmatch", num_classes=3, num_unlabelled=4,
                                   flex_warmup=warmup)
    _, state, _ = _run(settings, _outputs(weak=confident, strong=confident, index=[2]))
    np.testing.assert_allclose(state["flexmatch"]["classwise_acc"], expected, rtol=1e-6)


@pytest.mark.parametrize("warmup", [True, False])
def test_flexmatch_matches_the_reference_over_several_batches(warmup):
  rng = np.random.default_rng(0)
  num_unlabelled, num_classes = 6, 3
  batches = []
  for _ in range(8):  # class 0 favoured, so its threshold rises first
    logits = rng.normal(size=(4, num_classes)) * 4 + np.array([2.0, 0.0, 0.0])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    batches.append((probs.astype(np.float32), rng.choice(num_unlabelled, 4, replace=False)))
  masks, thresholds = _flexmatch_reference(batches, num_unlabelled, num_classes, 0.95, warmup)
  assert 0 < sum(map(sum, masks)) < 32  # the thresholds let some examples through, not all
  assert len(set(thresholds)) == 3  # and differ between classes
  settings = algorithms.Settings(algorithm="flexmatch", num_classes=num_classes,
                                 num_unlabelled=num_unlabelled, flex_warmup=warmup)
  state = algorithms.init_state(settings)
  for (probs, index), mask in zip(batches, masks):
    _, state, metrics = _run(settings, _outputs(weak=probs, strong=probs, index=index), state)
    np.testing.assert_allclose(metrics["mask_rate"], np.mean(mask))
  acc = np.asarray(state["flexmatch"]["classwise_acc"])
  np.testing.assert_allclose(0.95 * acc / (2 - acc), thresholds, rtol=1e-6)


def test_freematch_self_adaptive_thresholds_and_fairness_by_hand():
  settings = algorithms.Settings(algorithm="freematch", num_classes=2, freematch_ema=0.9,
                                 lambda_fairness=0.01)
  weak = np.array([[0.9, 0.1], [0.52, 0.48]])
  strong = np.array([[0.7, 0.3], [0.4, 0.6]])
  labelled = np.array([[0.8, 0.2], [0.5, 0.5]])
  loss, state, metrics = _run(settings, _outputs(weak=weak, strong=strong, labelled=labelled))
  stats = state["freematch"]
  # tau = 0.9 * 1/2 + 0.1 * mean(0.9, 0.52); p~ = 0.9 * 1/2 + 0.1 * mean p; h~ from (1, 0).
  np.testing.assert_allclose(stats["global_threshold"], 0.521, rtol=1e-6)
  np.testing.assert_allclose(stats["p_model"], [0.521, 0.479], rtol=1e-6)
  np.testing.assert_allclose(stats["label_hist"], [0.55, 0.45], rtol=1e-6)
  # Class 0's local threshold is tau * 1: 0.9 passes, 0.52 < 0.521 does not.
  np.testing.assert_allclose(metrics["mask_rate"], 0.5)
  unsup = -math.log(0.7) / 2
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  # Fairness over the one masked strong output: pbar / hbar = (0.7 / 1, 0.3 -> 0) -> (1, 0).
  model_term = np.array([0.521 / 0.55, 0.479 / 0.45])
  model_term /= model_term.sum()
  fairness = model_term[0] * np.log(1 + 1e-12) + model_term[1] * np.log(1e-12)
  np.testing.assert_allclose(metrics["fairness_loss"], fairness, rtol=1e-5)
  sup = (-math.log(0.8) - math.log(0.5)) / 2
  np.testing.assert_allclose(loss, sup + unsup + 0.01 * fairness, rtol=1e-5)


def test_freematch_fairness_is_zero_and_finite_when_nothing_passes():
  settings = algorithms.Settings(algorithm="freematch", num_classes=2, freematch_ema=0.9)
  state = algorithms.init_state(settings)
  state["freematch"]["global_threshold"] = jnp.asarray(0.99)
  outputs = _outputs(weak=[[0.6, 0.4]], strong=[[0.5, 0.5]], labelled=[[0.5, 0.5]], labels=[0])
  loss_fn = lambda strong: _run(settings, outputs.replace(logits_strong=strong), state)[0]
  _, _, metrics = _run(settings, outputs, state)
  assert float(metrics["mask_rate"]) == 0.0 and float(metrics["fairness_loss"]) == 0.0
  assert np.all(np.isfinite(jax.grad(loss_fn)(outputs.logits_strong)))


def test_distribution_alignment_uniform_and_labelled_targets():
  probs = jnp.asarray([[0.6, 0.4], [0.2, 0.8]])
  labels = jax.nn.one_hot(jnp.asarray([0, 0, 0, 1]), 2)
  state = {"p_model": jnp.full((2,), 0.5), "p_target": jnp.full((2,), 0.5),
           "count": jnp.asarray(0)}
  aligned, state1 = algorithms.distribution_alignment(probs, labels, state, "uniform", 0.5)
  # p_model starts at the first batch's mean (0.4, 0.6); row 0: (0.6 / 0.4, 0.4 / 0.6) * 0.5.
  np.testing.assert_allclose(state1["p_model"], [0.4, 0.6], rtol=1e-6)
  np.testing.assert_allclose(aligned[0], np.array([1.5, 2 / 3]) / (1.5 + 2 / 3), rtol=1e-5)
  # Second batch, m = 0.5: p_model = 0.5 * (0.4, 0.6) + 0.5 * (0.8, 0.2) = (0.6, 0.4).
  aligned, state2 = algorithms.distribution_alignment(
      jnp.asarray([[0.8, 0.2]]), labels, state1, "uniform", 0.5)
  np.testing.assert_allclose(state2["p_model"], [0.6, 0.4], rtol=1e-6)
  np.testing.assert_allclose(aligned[0], np.array([0.8 / 0.6, 0.2 / 0.4]) / (0.8 / 0.6 + 0.5),
                             rtol=1e-5)
  # 'labelled': p_target is the labelled batches' class frequencies (0.75, 0.25).
  aligned, state3 = algorithms.distribution_alignment(probs, labels, state, "labelled", 0.5)
  np.testing.assert_allclose(state3["p_target"], [0.75, 0.25])
  row = np.array([0.6 * 0.75 / 0.4, 0.4 * 0.25 / 0.6])
  np.testing.assert_allclose(aligned[0], row / row.sum(), rtol=1e-5)


def test_fixmatch_with_distribution_alignment_masks_the_aligned_probabilities():
  settings = algorithms.Settings(algorithm="fixmatch", num_classes=2, threshold=0.7,
                                 dist_align="uniform")
  weak = [[0.6, 0.4], [0.2, 0.8]]
  _, state, metrics = _run(settings, _outputs(weak=weak, strong=weak, labelled=[[0.5, 0.5]],
                                              labels=[0]))
  # Aligned: row 0 0.692, row 1 (0.2 / 0.4, 0.8 / 0.6) -> 0.727: only row 1 passes 0.7.
  np.testing.assert_allclose(metrics["mask_rate"], 0.5)
  assert int(state["dist_align"]["count"]) == 1


def _softmatch_reference(batches, num_classes, momentum, n_sigma, uniform_align):
  """SoftMatch in NumPy, batch by batch: (weights, unsup_loss) per batch and the final
  (mean, variance) of the confidence."""
  mean, variance, p_model = 1.0 / num_classes, 1.0, None
  results = []
  for weak, strong in batches:
    confidence_probs = weak
    if uniform_align:
      batch_mean = weak.mean(0)
      p_model = batch_mean if p_model is None else momentum * p_model + (1 - momentum) * batch_mean
      confidence_probs = weak * (1.0 / num_classes + 1e-6) / (p_model + 1e-6)
      confidence_probs /= confidence_probs.sum(-1, keepdims=True)
    confidence = confidence_probs.max(-1)
    mean = momentum * mean + (1 - momentum) * confidence.mean()
    variance = momentum * variance + (1 - momentum) * confidence.var(ddof=1)
    weights = np.exp(-np.minimum(confidence - mean, 0.0) ** 2 / (2 * variance / n_sigma ** 2))
    labels = weak.argmax(-1)
    cross_entropy = -np.log(strong[np.arange(len(labels)), labels])
    results.append((weights, np.mean(weights * cross_entropy)))
  return results, (mean, variance)


def test_softmatch_truncated_gaussian_weights_by_hand():
  settings = algorithms.Settings(algorithm="softmatch", num_classes=2, softmatch_ema=0.5,
                                 softmatch_n_sigma=2.0, softmatch_uniform_align=False)
  state = algorithms.init_state(settings)
  np.testing.assert_allclose(state["softmatch"]["mean"], 0.5)
  np.testing.assert_allclose(state["softmatch"]["variance"], 1.0)
  state["softmatch"].update(mean=jnp.asarray(0.8), variance=jnp.asarray(0.01))
  weak, strong = np.array([[0.9, 0.1], [0.4, 0.6]]), np.array([[0.7, 0.3], [0.2, 0.8]])
  loss, state, metrics = _run(settings, _outputs(weak=weak, strong=strong,
                                                 labelled=[[0.5, 0.5]], labels=[0]), state)
  # Confidences (0.9, 0.6): batch mean 0.75, unbiased variance 2 * 0.15^2 / 1 = 0.045;
  # mu = 0.5 * 0.8 + 0.5 * 0.75 = 0.775, sigma^2 = 0.5 * 0.01 + 0.5 * 0.045 = 0.0275.
  np.testing.assert_allclose(state["softmatch"]["mean"], 0.775, rtol=1e-6)
  np.testing.assert_allclose(state["softmatch"]["variance"], 0.0275, rtol=1e-5)
  # 0.9 >= mu weighs 1; 0.6 weighs exp(-0.175^2 / (2 * 0.0275 / 2^2)) = exp(-2.22727).
  weight = math.exp(-0.175 ** 2 / (2 * 0.0275 / 4))
  np.testing.assert_allclose(weight, 0.107822, rtol=1e-5)
  np.testing.assert_allclose(metrics["mask_rate"], (1 + weight) / 2, rtol=1e-5)
  # Hard labels 0 and 1: CE of the strong view -log 0.7 and -log 0.8.
  unsup = (-math.log(0.7) - weight * math.log(0.8)) / 2
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  np.testing.assert_allclose(loss, -math.log(0.5) + unsup, rtol=1e-5)


def test_softmatch_uniform_alignment_weighs_but_does_not_relabel():
  settings = algorithms.Settings(algorithm="softmatch", num_classes=2, softmatch_ema=0.5)
  weak, strong = np.array([[0.6, 0.4], [0.7, 0.3]]), np.array([[0.5, 0.5], [0.25, 0.75]])
  outputs = _outputs(weak=weak, strong=strong, labelled=[[0.5, 0.5]], labels=[0])
  _, state, metrics = _run(settings, outputs)
  # p_model = the first batch's mean (0.65, 0.35): row 0 aligns to (0.6 / 0.65, 0.4 / 0.35)
  # normalised = (0.4468, 0.5532), whose argmax is class 1; the pseudo-label stays class 0.
  np.testing.assert_allclose(state["softmatch"]["uniform_align"]["p_model"], [0.65, 0.35],
                             rtol=1e-6)
  aligned = weak * 0.5 / np.array([0.65, 0.35])
  aligned /= aligned.sum(-1, keepdims=True)
  assert aligned[0].argmax() == 1 and weak[0].argmax() == 0
  (weights, unsup), = _softmatch_reference([(weak, strong)], 2, 0.5, 2.0, True)[0]
  np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  np.testing.assert_allclose(metrics["unsup_loss"],
                             np.mean(weights * -np.log([0.5, 0.25])), rtol=1e-5)
  np.testing.assert_allclose(metrics["mask_rate"], weights.mean(), rtol=1e-5)


@pytest.mark.parametrize("uniform_align, n_sigma", [(True, 2.0), (False, 1.0)])
def test_softmatch_matches_the_reference_over_several_batches(uniform_align, n_sigma):
  rng = np.random.default_rng(1)
  num_classes = 4
  batches = []
  for _ in range(6):  # class 0 favoured, so uniform alignment moves the confidences
    logits = rng.normal(size=(2, 5, num_classes)) * 2 + np.array([1.5, 0.0, 0.0, 0.0])
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    batches.append((probs[0].astype(np.float64), probs[1].astype(np.float64)))
  expected, (mean, variance) = _softmatch_reference(batches, num_classes, 0.7, n_sigma,
                                                    uniform_align)
  weights = np.concatenate([w for w, _ in expected])
  assert 0.05 < weights.min() < 0.9 and weights.max() == 1.0  # both sides of the mean
  settings = algorithms.Settings(algorithm="softmatch", num_classes=num_classes,
                                 softmatch_ema=0.7, softmatch_n_sigma=n_sigma,
                                 softmatch_uniform_align=uniform_align)
  state = algorithms.init_state(settings)
  for (weak, strong), (weights, unsup) in zip(batches, expected):
    outputs = _outputs(weak=weak, strong=strong, labelled=[[0.4, 0.2, 0.2, 0.2]], labels=[0])
    _, state, metrics = _run(settings, outputs, state)
    np.testing.assert_allclose(metrics["mask_rate"], weights.mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["unsup_loss"], unsup, rtol=1e-5)
  np.testing.assert_allclose(state["softmatch"]["mean"], mean, rtol=1e-5)
  np.testing.assert_allclose(state["softmatch"]["variance"], variance, rtol=1e-5)
  # The weights and labels are cut from the gradient: only the strong view trains.
  grad_weak = jax.grad(lambda w: _run(settings, outputs.replace(logits_weak=w), state)[0])(
      outputs.logits_weak)
  assert float(jnp.abs(grad_weak).sum()) == 0.0


def test_softmatch_refuses_distribution_alignment_and_a_single_example():
  with pytest.raises(ValueError, match="dist_align must be ''"):
    algorithms.Settings(algorithm="softmatch", dist_align="uniform")
  settings = algorithms.Settings(algorithm="softmatch", num_classes=3)
  with pytest.raises(ValueError, match="at least 2 unlabelled examples"):
    _run(settings, _outputs(weak=WEAK_PROBS[:1], strong=STRONG_PROBS[:1], index=[0]))


def _digits_config(**ssl):
  config = digits_tiny.get_config()
  config.ssl.update(ssl)
  return config


@pytest.mark.parametrize("ssl, named", [
    ({"mu": 0}, "config.ssl.mu = 0 is out of range (allowed: an integer >= 1)"),
    ({"threshold": 1.5}, "config.ssl.threshold = 1.5 is out of range (allowed: a number in "
                         "[0.0, 1.0])"),
    ({"threshold": -0.1}, "config.ssl.threshold = -0.1"),
    ({"ema_m": 1.0}, "config.ssl.ema_m = 1.0 is out of range (allowed: a number in "
                     "[0.0, 1.0))"),
    ({"algorithm": "mixmatch"}, "config.ssl.algorithm = 'mixmatch' is out of range"),
    ({"temperature": 0.0}, "config.ssl.temperature = 0.0"),
    ({"dist_align": "gt"}, "config.ssl.dist_align = 'gt'"),
    ({"softmatch_ema": 1.0}, "config.ssl.softmatch_ema = 1.0 is out of range"),
    ({"softmatch_n_sigma": 0.0}, "config.ssl.softmatch_n_sigma = 0.0 is out of range"),
    ({"algorithm": "softmatch", "dist_align": "uniform"},
     "config.ssl.dist_align = 'uniform' with config.ssl.algorithm = 'softmatch'"),
    ({"strong_augment": "flip_lr|randaugment(num_ops=2"},
     "config.ssl.strong_augment = 'flip_lr|randaugment(num_ops=2' does not parse"),
    ({"weak_augment": "flip_lr|no_such_op"}, "config.ssl.weak_augment = 'flip_lr|no_such_op' "
                                             "does not parse: unknown augmentation op"),
])
def test_bad_ssl_settings_are_refused_naming_the_key(ssl, named):
  with pytest.raises(ConfigError, match=None) as raised:
    preflight.check_config(_digits_config(**ssl))
  assert named in str(raised.value)


def test_softmatch_needs_two_unlabelled_images_a_step():
  config = _digits_config(algorithm="softmatch", mu=1)
  config.batch_size = 1
  with pytest.raises(ConfigError, match=r"config.ssl.mu \* config.batch_size = 1 \* 1"):
    preflight.check_config(config)
  config.ssl.mu = 2
  preflight.check_config(config)


def test_paper_defaults_pass_preflight_and_build_settings():
  for name, defaults in algorithms.PAPER_DEFAULTS.items():
    config = _digits_config(algorithm=name, **defaults)
    preflight.check_config(config)
    settings = algorithms.settings_from_config(config, num_unlabelled=10)
    assert settings.algorithm == name and settings.num_steps == config.num_steps
