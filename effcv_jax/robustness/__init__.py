"""Robustness and calibration of a trained classifier.

Modules imported by name: `calibration` (expected calibration error, NLL, Brier score,
temperature scaling and the reliability diagram; pure NumPy/JAX on logits) and
`adversarial` (FGSM and PGD L-infinity attacks on the [0, 255] images a task takes,
jitted and sharded like evaluation), `corruptions` (the 15 corruptions of CIFAR-10-C /
ImageNet-C as jitted batch functions), `corruption_metrics` (CE, mCE, relative mCE) and
`corruption_reference` (the optional imagecorruptions package as a reference).
"""
