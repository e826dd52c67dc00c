"""Augmentation policy search on the device: each search outputs a policy string that the
augmentation spec language (effcv_jax/augment/spec.py) accepts.

  pba.py               Population Based Augmentation (Ho et al. 2019): a population of small
                       models trained together in one vmapped, jitted program, with exploit and
                       explore; outputs a schedule of policies.
  fast_autoaugment.py  Fast AutoAugment (Lim et al. 2019): density matching with a TPE search
                       over policies scored on augmented held-out folds.
"""
