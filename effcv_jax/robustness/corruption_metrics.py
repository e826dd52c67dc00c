"""Corruption error metrics of Hendrycks and Dietterich (2019) from top-1 error rates.

  errors: {corruption: [E_1, ..., E_5]} (error rates in [0, 1] per severity)
  CE_c          = sum_s E_{s,c} / sum_s E^baseline_{s,c}
  relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^baseline_{s,c} - E^baseline_clean)
  mCE, relative mCE: the means of CE_c and relative CE_c over the corruptions.

The baseline is another model's errors on the same corruptions and severities (ImageNet-C
uses AlexNet; here any run named by the caller). Pure Python on floats.
"""

from typing import Mapping, Sequence


def accuracies_to_errors(accuracies: Mapping[str, Mapping[str, float]]) -> dict[str, list[float]]:
  """{corruption: {'1': accuracy, ...}} (severity keys as strings, as the robustness JSON
  stores them) -> {corruption: [error per severity, in increasing severity]}."""
  return {name: [1.0 - by_severity[key] for key in sorted(by_severity, key=int)]
          for name, by_severity in accuracies.items()}


def corruption_error(errors: Sequence[float], baseline_errors: Sequence[float]) -> float:
  """CE: the sum over severities of the errors over that of the baseline's."""
  if len(errors) != len(baseline_errors):
    raise ValueError(f"{len(errors)} severities against the baseline's {len(baseline_errors)}")
  return sum(errors) / sum(baseline_errors)


def relative_corruption_error(errors: Sequence[float], clean_error: float,
                              baseline_errors: Sequence[float],
                              baseline_clean_error: float) -> float:
  """Relative CE: the summed rise of the error over the clean error, over the baseline's
  (how much worse corruption makes the model, against how much worse it makes the
  baseline); inf where the baseline does not degrade and the model does."""
  if len(errors) != len(baseline_errors):
    raise ValueError(f"{len(errors)} severities against the baseline's {len(baseline_errors)}")
  rise = sum(e - clean_error for e in errors)
  baseline_rise = sum(e - baseline_clean_error for e in baseline_errors)
  if baseline_rise == 0:
    return 0.0 if rise == 0 else float("inf")
  return rise / baseline_rise


def mean_corruption_errors(errors: Mapping[str, Sequence[float]], clean_error: float,
                           baseline_errors: Mapping[str, Sequence[float]],
                           baseline_clean_error: float,
                           baseline_name: str) -> dict:
  """CE and relative CE per corruption and their means, over the corruptions both have.

  Returns {'baseline': baseline_name, 'corruptions': [...], 'ce': {c: CE_c},
  'relative_ce': {c: ...}, 'mce': mean CE, 'relative_mce': mean relative CE,
  'error': {c: mean error over severities}, 'mean_error': its mean}; ValueError when
  no corruption is shared.
  """
  shared = [c for c in errors if c in baseline_errors]
  if not shared:
    raise ValueError(f"no corruption in common with the baseline {baseline_name}")
  ce = {c: corruption_error(errors[c], baseline_errors[c]) for c in shared}
  relative = {c: relative_corruption_error(errors[c], clean_error, baseline_errors[c],
                                           baseline_clean_error) for c in shared}
  mean_error = {c: sum(errors[c]) / len(errors[c]) for c in shared}
  return {"baseline": baseline_name, "corruptions": shared, "ce": ce, "relative_ce": relative,
          "mce": sum(ce.values()) / len(shared),
          "relative_mce": sum(relative.values()) / len(shared),
          "error": mean_error, "mean_error": sum(mean_error.values()) / len(shared)}
