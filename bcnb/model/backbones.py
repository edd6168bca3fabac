"""The pretrained bases bcnb can put under its head, each with its own preprocessing.

Every Keras application was trained on ImageNet images prepared in its own way, and feeding
it pixels prepared another way silently ruins its features. So each backbone here carries
its preprocessing as a *layer* placed inside the model (as ResNet50V2's Rescaling always
was): a saved model takes raw 0-255 pixels whatever its base, and loads in safe mode.

    resnet50v2, mobilenetv2   x / 127.5 - 1                       ("tf" mode)
    vgg19                     RGB -> BGR, minus the ImageNet mean   ("caffe" mode)
    densenet121               (x / 255 - mean) / std per channel    ("torch" mode)
    efficientnetb0            none: the Keras model rescales inside itself

The paper cites Saber et al. (IEEE Access, 2021), who compared such networks on mammograms
(MIAS) and found VGG16 best; the paper reports it as VGG19, the deeper sibling offered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np

KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications"
# ImageNet's per-channel statistics, as Keras' imagenet_utils uses them (RGB order).
IMAGENET_MEAN_RGB = np.array([123.68, 116.779, 103.939])
IMAGENET_MEAN_01 = np.array([0.485, 0.456, 0.406])
IMAGENET_STD_01 = np.array([0.229, 0.224, 0.225])
# MobileNetV2's ImageNet weights exist for these square input sizes; Keras uses 224's else.
MOBILENET_SIZES = (96, 128, 160, 192, 224)


@dataclass(frozen=True)
class Backbone:
    """One pretrained base: how to build it, prepare its input and find its ImageNet file."""

    name: str  # the value of the ``backbone`` parameter
    title: str  # as papers write it
    build: Callable[..., keras.Model]  # a keras.applications constructor
    preprocessing: Callable[[], keras.layers.Layer]
    weights_url: Callable[[int], str]  # img_size -> where Keras downloads the no-top file
    md5: str | None  # as recorded in Keras' source; None where Keras records none

    def weights_file(self, img_size: int) -> str:
        """The file name Keras caches the ImageNet weights under (in ~/.keras/models/)."""
        return self.weights_url(img_size).rsplit("/", 1)[-1]


def scale_to_minus_one_one() -> keras.layers.Layer:
    return keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocess")


def caffe_bgr_minus_mean() -> keras.layers.Layer:
    """A fixed 1x1 convolution: reorders RGB to BGR and subtracts the mean in one step.

    (Keras has no layer that reorders channels; a Lambda would not load in safe mode.)
    """
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for rgb, bgr in ((0, 2), (1, 1), (2, 0)):
        kernel[0, 0, rgb, bgr] = 1.0
    bias = -IMAGENET_MEAN_RGB[::-1].astype("float32")
    layer = keras.layers.Conv2D(3, 1, name="preprocess", trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, bias])
    return layer


def torch_standardise() -> keras.layers.Layer:
    """(x / 255 - mean) / std, written as one Normalization of 0-255 pixels."""
    return keras.layers.Normalization(
        mean=255 * IMAGENET_MEAN_01, variance=(255 * IMAGENET_STD_01) ** 2, name="preprocess"
    )


def unchanged() -> keras.layers.Layer:
    return keras.layers.Identity(name="preprocess")


def _url(folder: str, file_name: str) -> Callable[[int], str]:
    return lambda img_size: f"{KERAS_WEIGHTS}/{folder}/{file_name}"


def _mobilenet_url(img_size: int) -> str:
    rows = img_size if img_size in MOBILENET_SIZES else 224
    name = f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return f"{KERAS_WEIGHTS}/mobilenet_v2/{name}"


# File names, URLs and md5 sums as Keras' own application modules record them.
BACKBONES = {
    backbone.name: backbone
    for backbone in (
        Backbone("resnet50v2", "ResNet50V2", keras.applications.ResNet50V2, scale_to_minus_one_one,
                 _url("resnet", "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 "fac2f116257151a9d068a22e544a4917"),
        Backbone("vgg19", "VGG19", keras.applications.VGG19, caffe_bgr_minus_mean,
                 _url("vgg19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 "253f8cb515780f3b799900260a226db6"),
        Backbone("densenet121", "DenseNet121", keras.applications.DenseNet121, torch_standardise,
                 _url("densenet", "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5"),
                 "30ee3e1110167f948a6b9946edeeb738"),
        Backbone("efficientnetb0", "EfficientNetB0", keras.applications.EfficientNetB0, unchanged,
                 lambda size: "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
                 "50bc09e76180e00e4465e1a485ddc09d"),
        Backbone("mobilenetv2", "MobileNetV2", keras.applications.MobileNetV2, scale_to_minus_one_one,
                 _mobilenet_url, None),
    )
}  # fmt: skip


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"backbone: expected one of {', '.join(BACKBONES)}, got {name!r}")
    return BACKBONES[name]
