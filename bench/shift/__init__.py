"""Robustness under shift: MedMNIST-C's corruptions (Di Salvo et al. 2024, ``medmnistc`` 0.1.0),
ported to NumPy/SciPy/Pillow, generic sets for own data, and MedMNIST-C's BE/rBE summary.

- ``datasets()``, ``corruptions(dataset)``: the MedMNIST flags with a corruption set and each one's
  corruption names in MedMNIST-C's order.
- ``corrupt_split(images, dataset, corruption, severity)``: the 224-px test split exactly as
  ``medmnistc``'s dataset manager corrupts it; ``iter_corrupted`` yields many (corruption, severity)
  slices in one pass; ``corrupt_images_at(images, size, ...)`` resizes the result for smaller runs.
- ``generic_corruptions(modality)``, ``corrupt_generic(...)``: own data (``bench.shift.generic``).
- ``bench.shift.baselines``: balanced error, BE, rBE and the published AlexNet constants.
"""
from .generic import corrupt_generic, generic_corruptions, generic_reference, iter_generic, roundtrip
from .medmnistc import (PACKAGE, SEVERITIES, SIZE, check_images, corrupt_images_at, corrupt_split, corruptions,
                        datasets, family, iter_corrupted, resize_images)

__all__ = ["PACKAGE", "SEVERITIES", "SIZE", "check_images", "corrupt_generic", "corrupt_images_at", "corrupt_split",
           "corruptions", "datasets", "family", "generic_corruptions", "generic_reference", "iter_corrupted",
           "iter_generic", "resize_images", "roundtrip"]
