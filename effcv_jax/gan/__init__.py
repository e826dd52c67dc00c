"""A class-conditional GAN (models.py, losses.py, step.py), its resumable trainer (run.py),
generated images mixed into classifier batches (mixing.py) and sample quality measured with
the project's classifiers (quality.py)."""
