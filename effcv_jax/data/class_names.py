"""Class names of the datasets the project reads, by dataset spec (for model cards and
predictions)."""

import re

_DIGITS = tuple(str(d) for d in range(10))
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "mnist": _DIGITS,
    "digits": _DIGITS,
    "svhn": _DIGITS,
}


def class_names_for(dataset_spec: str) -> tuple[str, ...] | None:
  """The class names of the dataset a spec names ('npz:cifar10_train.npz', 'tfds:cifar10',
  'pkg:digits', 'tfds:svhn_cropped', ...), or None when the spec names no known dataset."""
  name = re.sub(r"^[a-z]+:", "", dataset_spec.lower())
  name = name.rsplit("/", 1)[-1].replace("-", "_")
  for key in sorted(CLASS_NAMES, key=len, reverse=True):   # 'fashion_mnist' before 'mnist'
    if re.match(rf"{key}(\d+k)?(?![a-z0-9])", name):    # a size suffix: mnist5k
      return CLASS_NAMES[key]
  return None
