"""bcnb: breast cancer histopathology notebooks.

Teaching and reproduction package for benign vs malignant classification of H&E breast
histopathology images by transfer learning from an ImageNet-pretrained ResNet50V2. For
teaching and research only; the disclaimer every output carries is in ``report.caveats``.

The package is laid out as the pipeline runs; each layer imports only the ones below it:

- ``config``: every parameter of a run, checked (imports nothing of bcnb).
- ``run/``: the run folder without TensorFlow: the record, one writer, which folders may be
  written, staging, every file a run leaves, seeds.
- ``data/``: stage 1, layouts, the scan, images, the built-in dataset, stain, augmentation,
  the task, downloads, loading, the patient-level split, the input pipeline.
- ``model/``: stage 2, backbones, the paper's transfer model, the ImageNet weights.
- ``train/``: stage 3, fitting, the feature cache, checkpoints, devices, Dask.
- ``evaluate/``: stage 4, scores, statistics, calibration, the decision rule, TTA, Grad-CAM,
  the backbone comparison.
- ``report/``: report.md, the model card, figures, and the caveats they all carry (no TensorFlow).
- ``batch/``: running the notebooks headless: one run, protocols and sweeps.
- the front doors: ``cli`` (the ``bcnb`` command), ``predict``, ``widgets``, ``bench``.

TensorFlow is imported only by the modules that need it.
"""

from bcnb.config import Config

__version__ = "0.1.0"
__all__ = ["Config", "__version__"]
