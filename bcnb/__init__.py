"""bcnb: breast cancer histopathology notebooks.

Teaching and reproduction package for benign vs malignant classification of H&E breast
histopathology images by transfer learning from an ImageNet-pretrained ResNet50V2. For
teaching and research, never for diagnosis.

Submodules, one per pipeline stage: config, synthetic, datasets, model, train, evaluate,
plots, report, reproduce, cli. TensorFlow is imported only by the modules that need it.
"""

from bcnb.config import Config

__version__ = "0.1.0"
__all__ = ["Config", "__version__"]
