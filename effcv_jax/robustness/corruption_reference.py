"""The `imagecorruptions` package (Michaelis et al., the ImageNet-C corruptions as a
library) as a reference for effcv_jax/robustness/corruptions.py: imported with two
compatibility patches, run with np.random seeded per image, and where its formulas differ
from the ImageNet-C script that ours follows. Optional: not a requirement of the project.
"""

import numpy as np

from effcv_jax.robustness import corruptions

# Where the reference's formula differs from ImageNet-C's script (which ours follows).
REFERENCE_DIFFERENCES = {
    "elastic_transform": "imagecorruptions replaced the script's random affine + elastic "
                         "field (alpha 244 * (2, 2, 0.05, 0.07, 0.12), sigma 244 * (0.7, 0.08, "
                         "0.01, 0.01, 0.01)) by an elastic field alone with other constants",
    "pixelate": "imagecorruptions enlarges with NEAREST, the script (and ours) with BOX",
    "frost": "imagecorruptions resizes the photograph to 1.1x the image when smaller (bicubic); "
             "at 32 px both crop the photograph at full size",
    "zoom_blur": "imagecorruptions keeps the top-left of the zoomed image, the script (and "
                 "ours) its centre",
    "motion_blur": "both re-implement ImageMagick's motion blur the same way",
    "snow": "imagecorruptions skips the script's PNG round trip before the streak blur",
}


def reference_module():
  """imagecorruptions, imported with two patches for current numpy and scikit-image:
  np.float_ (removed in numpy 2; fog) and skimage.filters.gaussian's multichannel=
  (renamed channel_axis=; glass_blur). ImportError when it is not installed."""
  if not hasattr(np, "float_"):
    np.float_ = np.float64
  import imagecorruptions  # pylint: disable=import-outside-toplevel
  from skimage import filters  # pylint: disable=import-outside-toplevel

  def gaussian(image, sigma, multichannel=None, **kwargs):
    if multichannel:
      kwargs["channel_axis"] = -1
    return filters.gaussian(image, sigma=sigma, **kwargs)

  imagecorruptions.corruptions.gaussian = gaussian
  return imagecorruptions


def reference_corrupt(module, images: np.ndarray, name: str, severity: int, seed: int,
                      indices: np.ndarray) -> np.ndarray:
  """uint8 (N, H, W, C) through imagecorruptions.corrupt, np.random seeded per image."""
  out = []
  for image, index in zip(images, indices):
    np.random.seed((seed * 1_000_003 + corruptions.CORRUPTIONS.index(name) * 7919
                    + severity * 104_729 + int(index)) % 2 ** 32)
    out.append(module.corrupt(image, severity, name))
  return np.stack(out)
