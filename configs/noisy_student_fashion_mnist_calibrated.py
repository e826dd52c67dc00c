"""Noisy Student on Fashion-MNIST, 1,000 labels, the filtered regime: the plain confidence
threshold against a threshold chosen on the validation split after temperature scaling.

  python -m experiments.noisy_student_report \
      --config=configs/noisy_student_fashion_mnist_calibrated.py \
      --workdir=runs/ns_fashion_mnist_calibrated \
      --report=reports/noisy_student_fashion_mnist_calibrated --data_dir=../shared/data

configs/noisy_student_fashion_mnist.py's `short_filtered` recipe (student trained 1,200 steps on
labelled : pseudo-labelled = 1 : 3 batches; pseudo-labels at confidence >= 0.3, the 4,000 most
confident per class), with 5,000 class-balanced training images held out as the validation
split that everything is evaluated on and that the calibration is fitted on (the test split is
never used). One iteration. Main run: the plain threshold 0.3 on the teacher's softmax.
Variant `calibrated_precision_90`: the teacher's logits divided by the temperature fitted on the
validation split (pseudo.calibrate), then the smallest confidence threshold whose validation
precision reaches 90 % (pseudo.target_precision) instead of 0.3. One seed each, one teacher.
"""

import ml_collections

from configs import noisy_student_fashion_mnist

NUM_HOLDOUT = 5000


def get_config():
  config = noisy_student_fashion_mnist.get_config()
  config.title = ("Noisy Student, Fashion-MNIST, 1,000 labels, filtered: plain against "
                  "calibrated threshold, validation accuracy")
  for stage in (config.teacher, config.student):
    stage.num_holdout = NUM_HOLDOUT
    stage.eval_split = "holdout"
  config.student.num_steps = 1200
  config.student.eval_every = 1200
  config.num_iterations = 1
  config.pseudo.threshold = 0.3
  config.pseudo.per_class = 4000
  config.ablations = ml_collections.ConfigDict({
      "calibrated_precision_90": {"pseudo.calibrate": "temperature", "pseudo.threshold": 0.0,
                                  "pseudo.target_precision": 0.9},
  }, sort_keys=False, allow_dotted_keys=True)
  return config
