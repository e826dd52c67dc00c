"""Host input pipeline for JPEG records: decode + random-resized-crop + flip, images per second
per core, this project's fast path against plain PIL and tf.data.

  python -m benchmarks.jpeg_pipeline   # writes benchmarks/results/jpeg_pipeline.json

Target (performance item 4): the fast path (data.jpeg_preprocess, in-process or in grain worker
processes) at least as fast per core as tf.data doing the same work.

Images: the ImageNet sample photos of the shared data directory at their real sizes (as they
are), and re-encoded variants of them at ImageNet's usual sizes (500 x 375, 375 x 500, 500 x 333,
...): a random region of the photo with the target's aspect ratio (at least 60 % of its side),
resized to the target size (Pillow, antialiased), flipped in every other variant, saved as
baseline JPEG at quality 90 into a temporary directory. Every variant does, per image: decode,
a random crop box of the official distribution (area 8-100 %, aspect 3/4-4/3, 10 attempts),
resize of the box to image_size x image_size, bicubic, a random left-right flip, uint8 out:

  pil_plain             Pillow, full decode, crop, resize (bicubic), flip; boxes from
                        efficientnet_preprocess.train_crop_box; a loop in this process
  fast_in_process       jpeg_preprocess.train_record_map (decoder 'libjpeg': only the box's
                        rows and columns decoded, at a DCT scale, and resized in C by
                        data.jpeg_crop; Pillow where that library could not be built, which
                        the results' crop_decoder says), a loop in this process, one
                        generator per record
  fast_pillow_in_process
                        the same with decoder 'pillow' (Pillow's draft-mode full decode,
                        box-only resize)
  fast_grain_N_workers  pipeline.train_iterator with that record_map, batches of `batch`,
                        N = 0 (in this process, grain's 2 reading threads) and N = 1, 2
                        worker processes (spawned; their start is excluded: `timed_grain` times
                        from idle, buffers full, to idle again, so the CPU and wall seconds are
                        those of making exactly the batches read)
  pil_decode_only       Pillow's full decode alone (what any Pillow variant pays before
                        resizing), and tf_data_1_thread_decode_crop_only, decode_and_crop_jpeg
                        of the same boxes alone, to show where the time goes
  tf_data_T_threads     tf.data in the optional TensorFlow install (a separate interpreter,
                        --tf_python, running this script with --part=tf): extract_jpeg_shape,
                        sample_distorted_bounding_box (the same arguments), decode_and_crop_jpeg
                        (decodes only the box's rows and columns), tf.image.resize bicubic,
                        random_flip_left_right, cast to uint8, batch; T = 1 (private thread
                        pool of 1, intra-op 1, one map call at a time) and T = all
                        (AUTOTUNE parallel calls and prefetch, TF's default thread pools)

Per core: images / CPU seconds of every process doing the work (this process and, for worker
processes, all its children; the TF interpreter's own for tf.data), measured over the same
window as the wall clock. The machine is shared with other jobs (see the load averages): the
wall-clock rates move with the load, the per-core rates (work done per CPU second) much less,
so the target is read on them. The variants alternate within each round; medians over rounds.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "main", ["main", "tf"], "main: everything (starts --part=tf itself); "
                  "tf: the tf.data variant alone, printing JSON (run by the TF interpreter).")
flags.DEFINE_integer("variants_per_photo", 14, "Re-encoded variants of each photo.")
flags.DEFINE_integer("image_size", 224, "Side of the crops.")
flags.DEFINE_integer("batch", 32, "Batch size of the grain and tf.data pipelines.")
flags.DEFINE_integer("images_per_round", 480, "Images timed per variant and round.")
flags.DEFINE_integer("rounds", 3, "Timed rounds (medians reported).")
flags.DEFINE_string("tf_python", "/work/venv-tf/bin/python",
                    "Interpreter of the optional TensorFlow install (pip install -r "
                    "requirements-tf.txt in its own virtual environment).")
flags.DEFINE_integer("tf_threads", 0, "--part=tf: 1 for one thread, 0 for TF's defaults.")
flags.DEFINE_string("jpeg_dir", "", "--part=tf: the directory of the generated JPEGs.")
flags.DEFINE_string("output", "benchmarks/results/jpeg_pipeline.json", "Results file ('': none).")

TARGET = 1.0
# Batches per reading process (at least one) that a grain pipeline's buffers hold at most:
# pipeline.train_iterator prefetches 8 in each reading process, a worker passes on 2 more.
FILL_BATCHES = 12
# (width, height) of the re-encoded variants: ImageNet's most common sizes first.
VARIANT_SIZES = ((500, 375), (375, 500), (500, 333), (333, 500), (500, 500), (500, 400),
                 (400, 500), (500, 281), (450, 338), (640, 480), (500, 375), (375, 500),
                 (500, 334), (480, 360))
QUALITY = 90
NOTES = (
    "Per-core rates (images per CPU second, all processes doing the work) are the fair "
    "figures on a shared machine (load averages in the file); the wall-clock ones move with "
    "the load. tf.data's decode_and_crop_jpeg and the fast path's decoder 'libjpeg' decode "
    "only the crop's rows and columns (libjpeg-turbo's partial decoding); Pillow (pil_*, "
    "fast_pillow_*) decodes the whole image (at 1/2, 1/4 or 1/8 scale when the box allows "
    "it, which at 224 px on ImageNet-sized images is rare). The fast path resamples only the "
    "box, with antialiasing (more taps than TF's unantialiased bicubic).")


# ---------------------------------------------------------------------------------------------
# Images.
# ---------------------------------------------------------------------------------------------


def make_jpegs(folder: pathlib.Path, variants_per_photo: int) -> dict:
  """Writes the photos and their variants (module docstring) into `folder`; returns a summary:
  count, originals, mean width, height and bytes."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  data_dir = pathlib.Path(os.environ.get("EFFCV_DATA_DIR", "../shared/data"))
  photos = sorted((data_dir / "imagenet_samples").glob("imagenet_*.jpg"))
  if not photos:
    raise SystemExit(f"no imagenet_samples/imagenet_*.jpg under {data_dir}: set "
                     "EFFCV_DATA_DIR to the shared data directory")
  rng = np.random.default_rng(0)
  sizes, count = [], 0
  for index, path in enumerate(photos):
    (folder / f"{count:05d}.jpg").write_bytes(path.read_bytes())
    count += 1
    photo = Image.open(path).convert("RGB")
    for k in range(variants_per_photo):
      width, height = VARIANT_SIZES[(index + k) % len(VARIANT_SIZES)]
      side = rng.uniform(0.6, 1.0)
      aspect = width / height
      crop_w = min(photo.width, photo.height * aspect) * side
      crop_h = crop_w / aspect
      left = rng.uniform(0, photo.width - crop_w)
      top = rng.uniform(0, photo.height - crop_h)
      variant = photo.resize((width, height), Image.Resampling.BICUBIC,
                             box=(left, top, left + crop_w, top + crop_h))
      if k % 2:
        variant = variant.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
      variant.save(folder / f"{count:05d}.jpg", quality=QUALITY)
      count += 1
  for path in sorted(folder.glob("*.jpg")):
    with Image.open(path) as image:
      sizes.append((image.width, image.height, path.stat().st_size))
  sizes = np.array(sizes, np.float64)
  return {"count": count, "originals": len(photos), "variants_per_photo": variants_per_photo,
          "quality": QUALITY, "mean_width": round(float(sizes[:, 0].mean()), 1),
          "mean_height": round(float(sizes[:, 1].mean()), 1),
          "mean_kib": round(float(sizes[:, 2].mean() / 1024), 1)}


def read_jpegs(folder: pathlib.Path) -> list[bytes]:
  return [path.read_bytes() for path in sorted(folder.glob("*.jpg"))]


# ---------------------------------------------------------------------------------------------
# Timing.
# ---------------------------------------------------------------------------------------------


def _cpu_seconds(children) -> float:
  """CPU seconds of this process (all its threads) and of the `children` (psutil processes)."""
  total = time.process_time()
  for process in children:
    try:
      times = process.cpu_times()
      total += times.user + times.system
    except Exception:  # pylint: disable=broad-except
      pass   # a process that ended: its time is lost to both ends of the window
  return total


def timed(work, count: int, with_children: bool = False) -> dict:
  """Runs work() (which handles `count` images) once; CPU seconds of this process (and its
  children), wall seconds, and the rates."""
  processes = []
  if with_children:
    import psutil  # pylint: disable=import-outside-toplevel
    processes = psutil.Process().children(recursive=True)
  cpu, wall = _cpu_seconds(processes), time.perf_counter()
  work()
  wall = time.perf_counter() - wall
  cpu = _cpu_seconds(processes) - cpu
  return _rates(count, cpu, wall)


def _rates(count: int, cpu: float, wall: float) -> dict:
  return {"images": count, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
          "images_per_cpu_s": round(count / cpu, 1), "images_per_wall_s": round(count / wall, 1)}


# ---------------------------------------------------------------------------------------------
# tf.data (run by the TensorFlow interpreter).
# ---------------------------------------------------------------------------------------------


def tf_part(folder: pathlib.Path, threads: int, image_size: int, batch: int,
            images_per_round: int, rounds: int) -> dict:
  """tf.data's rates over `rounds` windows of images_per_round images (after a warm-up)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if threads:
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
  encoded = read_jpegs(folder)
  whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])

  def crop(data, decode_only=False):
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.image.extract_jpeg_shape(data), bounding_boxes=whole, min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    top, left, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(size)
    image = tf.image.decode_and_crop_jpeg(data, tf.stack([top, left, height, width]),
                                          channels=3)
    if decode_only:
      return image
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    image = tf.image.random_flip_left_right(image)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

  def measure(decode_only: bool) -> list[dict]:
    parallel = 1 if threads else tf.data.AUTOTUNE
    dataset = tf.data.Dataset.from_tensor_slices(encoded).shuffle(len(encoded), seed=0)
    dataset = dataset.repeat().map(lambda data: crop(data, decode_only),
                                   num_parallel_calls=parallel)
    # Decoded crops differ in shape: counted one by one instead of batched.
    dataset = dataset if decode_only else dataset.batch(batch)
    per_element = 1 if decode_only else batch
    if threads:
      options = tf.data.Options()
      options.threading.private_threadpool_size = threads
      dataset = dataset.with_options(options)
    else:
      dataset = dataset.prefetch(tf.data.AUTOTUNE)
    iterator = iter(dataset)
    for _ in range(max(2, 64 // per_element)):
      next(iterator)
    steps = max(1, images_per_round // batch) * batch // per_element

    def work():
      for _ in range(steps):
        next(iterator)

    return [timed(work, steps * per_element) for _ in range(rounds)]

  result = {"tf_version": tf.__version__, "rounds": measure(False)}
  if threads == 1:
    result["decode_crop_only_rounds"] = measure(True)
  return result


def run_tf(folder: pathlib.Path, threads: int, rounds: int) -> dict:
  """--part=tf in the TF interpreter; its JSON, or {'error': why} when it could not run."""
  if not pathlib.Path(FLAGS.tf_python).exists():
    return {"error": f"no TensorFlow interpreter at {FLAGS.tf_python}"}
  command = [FLAGS.tf_python, "-m", "benchmarks.jpeg_pipeline", "--part=tf",
             f"--jpeg_dir={folder}", f"--tf_threads={threads}", f"--rounds={rounds}",
             f"--image_size={FLAGS.image_size}", f"--batch={FLAGS.batch}",
             f"--images_per_round={FLAGS.images_per_round}"]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        cwd=pathlib.Path(__file__).resolve().parents[1])
  if done.returncode:
    return {"error": done.stderr.strip().splitlines()[-1:]}
  return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# This project's variants.
# ---------------------------------------------------------------------------------------------


def pil_plain(encoded: list[bytes], image_size: int, start: int, count: int) -> None:
  """Full decode, crop, bicubic resize, flip: the plain Pillow way."""
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from effcv_jax.data import efficientnet_preprocess  # pylint: disable=import-outside-toplevel
  for i in range(start, start + count):
    rng = np.random.default_rng(i)
    image = Image.open(io.BytesIO(encoded[i % len(encoded)])).convert("RGB")
    box = efficientnet_preprocess.train_crop_box(rng, image.height, image.width, image_size)
    image = image.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    if rng.random() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.asarray(image)


def pil_decode(encoded: list[bytes], start: int, count: int) -> None:
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  for i in range(start, start + count):
    Image.open(io.BytesIO(encoded[i % len(encoded)])).convert("RGB")


def fast_loop(encoded: list[bytes], image_size: int, start: int, count: int,
              decoder: str) -> None:
  from effcv_jax.data import jpeg_preprocess  # pylint: disable=import-outside-toplevel
  record_map = jpeg_preprocess.train_record_map(image_size, decoder)
  for i in range(start, start + count):
    record_map({"image": encoded[i % len(encoded)], "label": np.int32(0)},
               np.random.default_rng(i))


class EncodedRecords:
  """A source of records {'image': encoded JPEG bytes, 'label': int32} (as TFDS ImageNet read
  with encoded_images)."""

  def __init__(self, encoded: list[bytes]):
    self.encoded = encoded

  def __len__(self) -> int:
    return len(self.encoded)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.encoded[index], "label": np.int32(index)}


IDLE_INTERVAL_S = 0.25


def wait_idle(processes, interval_s: float = IDLE_INTERVAL_S, quiet_s: float = 0.01,
              limit_s: float = 120.0) -> None:
  """Waits until the processes (and this one) use less than quiet_s CPU seconds in
  interval_s: the pipeline's buffers are full and its readers wait."""
  last = _cpu_seconds(processes)
  for _ in range(int(limit_s / interval_s)):
    time.sleep(interval_s)
    now = _cpu_seconds(processes)
    if now - last < quiet_s:
      return
    last = now
  raise RuntimeError(f"the pipeline did not go idle in {limit_s} s")


def timed_grain(iterator, steps: int, batch: int, name: str) -> dict:
  """A grain iterator's rates over a window from idle (buffers full) to idle again after
  reading FILL_BATCHES * workers + steps batches: the buffers hold as many batches at both
  ends, so the window's CPU seconds and wall time (less the last, quiet, interval of the idle
  test) are those of making exactly the batches read."""
  import psutil  # pylint: disable=import-outside-toplevel
  workers = int(name.split("_")[2])
  processes = psutil.Process().children(recursive=True)
  count = FILL_BATCHES * max(1, workers) + steps
  wait_idle(processes)
  cpu, wall = _cpu_seconds(processes), time.perf_counter()
  for _ in range(count):
    next(iterator)
  wait_idle(processes)
  wall = time.perf_counter() - wall - IDLE_INTERVAL_S
  cpu = _cpu_seconds(processes) - cpu
  return _rates(count * batch, cpu, wall)


def grain_iterator(encoded: list[bytes], image_size: int, batch: int, workers: int):
  from effcv_jax.data import jpeg_preprocess, pipeline  # pylint: disable=import-outside-toplevel
  iterator = pipeline.train_iterator(
      EncodedRecords(encoded), batch, seed=0, process_index=0, process_count=1,
      record_map=jpeg_preprocess.train_record_map(image_size), num_workers=workers)
  for _ in range(max(2, 2 * workers)):   # workers started, buffers filled
    next(iterator)
  return iterator


def main_part() -> dict:
  from benchmarks import machine  # pylint: disable=import-outside-toplevel
  from effcv_jax.data import jpeg_crop  # pylint: disable=import-outside-toplevel
  load_start = os.getloadavg()
  size, batch = FLAGS.image_size, FLAGS.batch
  steps = max(1, FLAGS.images_per_round // batch)
  count = steps * batch
  with tempfile.TemporaryDirectory(prefix="jpeg_pipeline_") as folder:
    folder = pathlib.Path(folder)
    images = make_jpegs(folder, FLAGS.variants_per_photo)
    encoded = read_jpegs(folder)
    iterators = {f"fast_grain_{n}_workers": grain_iterator(encoded, size, batch, n)
                 for n in (0, 1, 2)}
    rounds: dict[str, list[dict]] = {}
    tf_info = {}
    try:
      for r in range(FLAGS.rounds):
        start = r * count
        rounds.setdefault("pil_plain", []).append(
            timed(lambda s=start: pil_plain(encoded, size, s, count), count))
        rounds.setdefault("pil_decode_only", []).append(
            timed(lambda s=start: pil_decode(encoded, s, count), count))
        for name, decoder in (("fast_in_process", "libjpeg"),
                              ("fast_pillow_in_process", "pillow")):
          rounds.setdefault(name, []).append(
              timed(lambda s=start, d=decoder: fast_loop(encoded, size, s, count, d), count))
        for name, iterator in iterators.items():
          rounds.setdefault(name, []).append(timed_grain(iterator, steps, batch, name))
        for threads, name in ((1, "tf_data_1_thread"), (0, "tf_data_all_threads")):
          result = run_tf(folder, threads, 1)
          if "error" in result:
            tf_info[name] = result
            continue
          tf_info["tf_version"] = result["tf_version"]
          rounds.setdefault(name, []).extend(result["rounds"])
          if "decode_crop_only_rounds" in result:
            rounds.setdefault(name + "_decode_crop_only", []).extend(
                result["decode_crop_only_rounds"])
    finally:
      for iterator in iterators.values():
        if hasattr(iterator, "close"):
          iterator.close()
  medians = {name: {"images_per_cpu_s": statistics.median(r["images_per_cpu_s"] for r in rows),
                    "images_per_wall_s": statistics.median(r["images_per_wall_s"]
                                                           for r in rows)}
             for name, rows in rounds.items()}
  per_core = {name: m["images_per_cpu_s"] for name, m in medians.items()}
  fast = {k: v for k, v in per_core.items() if k.startswith("fast_")}
  tf_rates = {k: v for k, v in per_core.items()
              if k.startswith("tf_data_") and not k.endswith("_only")}
  ratios, targets = {}, {}
  if tf_rates:
    best_tf = max(tf_rates, key=tf_rates.get)
    for name, rate in fast.items():
      ratios[f"{name}_over_{best_tf}"] = round(rate / tf_rates[best_tf], 3)
    ratios["pil_plain_over_" + best_tf] = round(per_core["pil_plain"] / tf_rates[best_tf], 3)
    best_fast = max(fast, key=fast.get)
    value = round(fast[best_fast] / tf_rates[best_tf], 3)
    targets[f"best_fast_over_best_tf_data_per_core >= {TARGET:g}"] = {
        "value": value, "met": bool(value >= TARGET), "fast": best_fast, "tf_data": best_tf}
  for name, rate in fast.items():
    ratios[f"{name}_over_pil_plain"] = round(rate / per_core["pil_plain"], 3)
  return {
      "command": machine.command_line("benchmarks.jpeg_pipeline"),
      "machine": machine.machine_info(),
      "load_average_start": list(load_start),
      "definition": ("decode + random-resized-crop (official box distribution) to image_size "
                     "+ random flip, uint8; per core = images / CPU s of every process doing "
                     "the work; medians over rounds (variants alternate)"),
      "settings": {"image_size": size, "batch": batch, "images_per_round": count,
                   "rounds": FLAGS.rounds},
      "images": images,
      "crop_decoder": {"available": jpeg_crop.available(),
                       "unavailable_reason": jpeg_crop.unavailable_reason()},
      "tensorflow": tf_info or {"tf_version": "not measured"},
      "images_per_cpu_s_per_round": {k: [r["images_per_cpu_s"] for r in v]
                                     for k, v in rounds.items()},
      "images_per_wall_s_per_round": {k: [r["images_per_wall_s"] for r in v]
                                      for k, v in rounds.items()},
      "median_images_per_cpu_s": per_core,
      "median_images_per_wall_s": {k: m["images_per_wall_s"] for k, m in medians.items()},
      "ratios_per_core": ratios,
      "targets": targets,
      "notes": NOTES,
      "load_average_end": list(os.getloadavg()),
  }


def main(argv):
  del argv
  if FLAGS.part == "tf":
    result = tf_part(pathlib.Path(FLAGS.jpeg_dir), FLAGS.tf_threads, FLAGS.image_size,
                     FLAGS.batch, FLAGS.images_per_round, FLAGS.rounds)
    print(json.dumps(result))
    return
  from benchmarks import machine  # pylint: disable=import-outside-toplevel
  machine.print_and_write(main_part(), FLAGS.output)


if __name__ == "__main__":
  sys.exit(app.run(main))
