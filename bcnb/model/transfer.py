"""Stage 2, model: the paper's transfer model, on ResNet50V2 or another pretrained base.

    image (0-255) -> preprocessing layer -> base, frozen, training=False
                  -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense(1, sigmoid)

The paper's base is ResNet50V2, whose preprocessing (exactly what
``keras.applications.resnet_v2.preprocess_input`` does) is a Rescaling to [-1, 1]; other
bases bring their own (:mod:`bcnb.model.backbones`). Being a layer of the model, it travels with
a saved model, which takes raw images and loads with Keras' safe mode: no Lambda layers.

Fine-tuning (:func:`unfreeze_top_layers`) later lets the top of the base learn, with every
BatchNormalization layer kept frozen.
"""

from __future__ import annotations

import hashlib
import os
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from bcnb.config import Config
from bcnb.data.tasks import task_named
from bcnb.model.backbones import get_backbone
from bcnb.run.artifacts import WEIGHTS_FILE
from bcnb.run.files import read_run_json, replace_from_writer, write_json_atomic
from bcnb.run.seeds import seed_everything

FEATURE_LAYER = "pool"


class WeightsUnavailableError(FileNotFoundError):
    """ImageNet weights were asked for, cannot be had, and random weights are not allowed."""


@dataclass(frozen=True)
class WeightsInfo:
    """Which weights the base really got (:mod:`bcnb.report.caveats` says what that means)."""

    requested: str
    used: str  # "imagenet", "file" or "random"
    source: str  # the file loaded, or why the weights are random
    pretrained: bool


def keras_home() -> Path:
    """Keras' cache root: $KERAS_HOME, else ~/.keras (read now, not when Keras was imported)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def imagenet_weights_path(backbone: str = "resnet50v2", img_size: int = 224) -> Path:
    """Where a backbone's ImageNet weights file must be for offline use."""
    return keras_home() / "models" / get_backbone(backbone).weights_file(img_size)


def resolve_weights(
    weights: str, allow_random_weights: bool, backbone: str = "resnet50v2", img_size: int = 224
) -> tuple[str | None, WeightsInfo]:
    """Turn the ``weights`` parameter into what Keras loads, plus an honest record of it.

    "imagenet" goes through Keras' own download and cache (so a file placed in the cache
    works offline); "none" is a random initialisation; anything else is a weights file path.
    """
    if weights.lower() == "none":
        return None, WeightsInfo(weights, "random", "weights=none was requested", False)
    if weights.lower() != "imagenet":
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"weights: file {path} does not exist")
        return str(path), WeightsInfo(weights, "file", str(path), True)
    spec = get_backbone(backbone)
    file_name = spec.weights_file(img_size)
    # Keras falls back to /tmp/.keras when the cache folder does not exist yet (not writable):
    # the file would then land where no later run looks for it.
    (keras_home() / "models").mkdir(parents=True, exist_ok=True)
    try:
        path = keras.utils.get_file(
            file_name,
            spec.weights_url(img_size),
            cache_dir=str(keras_home()),
            cache_subdir="models",
            file_hash=spec.md5,
        )
    except Exception as error:  # Keras raises a bare Exception when the download fails
        reason = f"ImageNet weights unavailable ({_first_line(error)})"
        if not allow_random_weights:
            raise WeightsUnavailableError(
                f"weights: cannot get {file_name}; for offline use, put it at "
                f"{imagenet_weights_path(backbone, img_size)} (see data_instructions.md), or set "
                "allow_random_weights=true to run without pretraining"
            ) from None
        return None, WeightsInfo(weights, "random", reason, False)
    return path, WeightsInfo(weights, "imagenet", path, True)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else error.__class__.__name__


def build_base_model(img_size: int, weights: str | None, backbone: str = "resnet50v2") -> keras.Model:
    """The pretrained base without its ImageNet classifier, frozen."""
    base_model = get_backbone(backbone).build(
        include_top=False, weights=weights, input_shape=(img_size, img_size, 3)
    )
    # Frozen: its weights are not updated by training.
    base_model.trainable = False
    return base_model


def build_model(
    img_size: int = 224,
    weights: str | None = None,
    dropout: float = 0.2,
    precision: str = "float32",
    backbone: str = "resnet50v2",
    task: str = "binary",
) -> keras.Model:
    """The paper's transfer model; ``weights`` is what Keras loads (see resolve_weights).

    ``precision="mixed_bfloat16"`` computes in bfloat16 (weights stay float32); the
    probability is always computed in float32. ``task="subtype"`` puts a softmax over
    BreakHis' eight tumour types where the paper has one sigmoid unit.
    """
    head = task_named(task)  # an unknown task is named before the base is built
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # Keras applications take the global policy
    try:
        base_model = build_base_model(img_size, weights, backbone)
        inputs = keras.Input(shape=(img_size, img_size, 3), name="image")
        # The pixels as this base saw them in ImageNet training; ResNet50V2: x / 127.5 - 1.
        x = get_backbone(backbone).preprocessing()(inputs)
        # training=False asks for inference mode: BatchNormalization normalising with its
        # ImageNet statistics, not the batch's. In Keras 3, fit() overrides it for nested
        # models (keras-team/keras#20285); what guarantees inference mode is the frozen base,
        # since a frozen BatchNormalization layer always runs in inference mode.
        x = base_model(x, training=False)
        x = keras.layers.GlobalAveragePooling2D(name=FEATURE_LAYER)(x)
        x = keras.layers.Dropout(dropout, name="dropout")(x)
        outputs = keras.layers.Dense(
            head.units, activation=head.activation, name="classifier", dtype="float32"
        )(x)
    finally:
        keras.config.set_dtype_policy(previous)
    return keras.Model(inputs, outputs, name=f"bcnb_{backbone}")


def build_transfer_model(cfg: Config) -> tuple[keras.Model, WeightsInfo]:
    """Stage entry point: resolve the weights and build the model for ``cfg``."""
    keras_weights, info = resolve_weights(cfg.weights, cfg.allow_random_weights, cfg.backbone, cfg.img_size)
    seed_everything(cfg.seed)  # random weights, where used, depend on the seed
    return build_model(cfg.img_size, keras_weights, cfg.dropout, cfg.precision, cfg.backbone, cfg.task), info


def base_of(model: keras.Model) -> keras.Model:
    """The pretrained base inside a bcnb model (the one layer that is itself a model)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def weights_digest(weights: list, digest=None):
    """``digest`` (a new SHA-256 by default) fed every weight's bytes in order: what a feature
    cache's key and a decision rule's fingerprint say of the model they were made with."""
    digest = digest or hashlib.sha256()
    for weight in weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest


def feature_extractor(model: keras.Model) -> keras.Model:
    """The model up to the pooled features: preprocessing, frozen base, pooling.

    One extractor per model, reused: a new one would trace its predict function again
    (seconds each time on a CPU).
    """
    if model not in _EXTRACTORS:
        _EXTRACTORS[model] = keras.Model(model.inputs, model.get_layer(FEATURE_LAYER).output, name="features")
    return _EXTRACTORS[model]


_EXTRACTORS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def classifier_head(model: keras.Model) -> keras.Model:
    """Dropout + Dense applied to pooled features, *sharing* the model's own layers.

    Training this small model trains the full model's classifier, because the layers are
    the same objects.
    """
    n_features = model.get_layer(FEATURE_LAYER).output.shape[-1]
    features = keras.Input(shape=(n_features,), name="features")
    x = model.get_layer("dropout")(features)
    return keras.Model(features, model.get_layer("classifier")(x), name="head")


def new_head(n_features: int, dropout: float = 0.2, task: str = "binary") -> keras.Model:
    """The paper's head alone, with layers of its own: Dropout + Dense on ``n_features`` pooled
    features, initialised from the global seed. A protocol's models of one magnification are
    these, trained on the fold's cached features (:func:`bcnb.train.fit.train_new_head`)."""
    head = task_named(task)
    features = keras.Input(shape=(n_features,), name="features")
    x = keras.layers.Dropout(dropout, name="dropout")(features)
    outputs = keras.layers.Dense(head.units, activation=head.activation, name="classifier", dtype="float32")(
        x
    )
    return keras.Model(features, outputs, name="head")


def unfreeze_top_layers(model: keras.Model, n_layers: int) -> list[str]:
    """Let the top ``n_layers`` layers of the base learn; return the names of those that do.

    Layers are counted from the base's output down, as in the Keras fine-tuning guide.
    BatchNormalization layers stay frozen wherever they are: a frozen BN layer runs in
    inference mode, keeping its ImageNet statistics, whereas an unfrozen one would switch
    to the statistics of each small batch and wreck the features it feeds (the base's
    training=False call alone does not prevent that in Keras 3, keras-team/keras#20285).
    Compile the model again afterwards: trainability is read when the model is compiled.
    """
    base = base_of(model)
    base.trainable = True  # a frozen model freezes every layer inside; open it, then choose
    top = base.layers[len(base.layers) - n_layers :] if n_layers > 0 else []
    for layer in base.layers:
        layer.trainable = layer in top and not isinstance(layer, keras.layers.BatchNormalization)
    return [layer.name for layer in base.layers if layer.trainable and layer.weights]


def count_parameters(model: keras.Model) -> dict[str, int]:
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    frozen = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {"trainable": trainable, "non_trainable": frozen, "total": trainable + frozen}


def forget_retracings() -> None:
    """Empty TensorFlow's count of recent tf.function retracings.

    It is kept per traced function's code, not per model, so separate models (one notebook's
    and the next one's in a shared kernel, or the bases notebook 05 compares) add up to a
    "triggered tf.function retracing" warning that none of them earns alone. The count is
    TensorFlow's private state; if a later version moves it, the warning may come back, and
    nothing else changes.
    """
    try:
        from tensorflow.python.eager.polymorphic_function import polymorphic_function
    except ImportError:
        return
    manager = getattr(polymorphic_function, "_frequent_tracing_detector_manager", None)
    detectors = getattr(manager, "_detectors", None)
    if detectors is not None:
        detectors.clear()


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Save a ``.keras`` file without ever leaving a half-written one."""
    return replace_from_writer(path, model.save)


def load_model(path: str | Path) -> keras.Model:
    """Load a saved bcnb model with Keras' safe mode on (no arbitrary code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the notebook that writes it first")
    return keras.models.load_model(path, safe_mode=True)


def save_weights_info(info: WeightsInfo, run_dir: str | Path) -> Path:
    return write_json_atomic(Path(run_dir) / WEIGHTS_FILE, asdict(info))


def load_weights_info(run_dir: str | Path) -> WeightsInfo:
    return WeightsInfo(**read_run_json(run_dir, WEIGHTS_FILE, "02_model"))
