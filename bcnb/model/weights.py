"""The ImageNet weights as a step of their own: fetch, import a copy, and see what is there.

Keras keeps each backbone's ImageNet file in its cache (``~/.keras/models/`` or
``$KERAS_HOME/models/``) and checks it against the md5 its own source records. A classroom
without internet can fill that cache from one downloaded copy: ``bcnb weights import FILE``
checks the file the same way before putting it in place, so a wrong or truncated copy is
refused instead of quietly giving every student random weights. Where Keras records no md5
(MobileNetV2), the file must hold the backbone's layers and load into it, and ``status``
calls it "not verified" rather than pretend.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

from bcnb.model.backbones import BACKBONES, get_backbone
from bcnb.model.transfer import imagenet_weights_path, keras_home
from bcnb.run.files import replace_from_writer


def md5_of(path: Path) -> str:
    digest = hashlib.md5()  # the checksum Keras records for its weights files, not for security
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_file(path: Path, backbone: str, img_size: int = 224, try_loading: bool = False) -> str:
    """ "" if ``path`` is the backbone's ImageNet file, else what is wrong with it.

    Where Keras records an md5 it decides; where it records none, the file must at least hold
    the backbone's layers (and, with ``try_loading``, load into it): a weaker check, which
    ``status`` reports as "not verified".
    """
    spec = get_backbone(backbone)
    if not path.is_file():
        return "missing"
    if spec.md5 is None:
        return check_weights_layers(path, backbone, img_size, try_loading)
    md5 = md5_of(path)
    return "" if md5 == spec.md5 else f"md5 {md5}, expected {spec.md5} (a wrong or truncated file)"


def check_weights_layers(path: Path, backbone: str, img_size: int = 224, try_loading: bool = False) -> str:
    """ "" if ``path`` holds as many weighted layers as the backbone without its top (and loads
    into it, with ``try_loading``), else what is wrong: the count Keras itself checks on loading."""
    spec = get_backbone(backbone)
    try:
        saved = count_saved_layers(path)
    except ValueError as error:
        return str(error)
    base = spec.build(include_top=False, weights=None, input_shape=(img_size, img_size, 3))
    expected = sum(1 for layer in base.layers if layer.weights)
    if saved != expected:
        return f"holds {saved} weighted layers, {spec.title} without its top has {expected}"
    if try_loading:
        try:
            base.load_weights(str(path))
        except Exception as error:  # Keras raises ValueError, KeyError or OSError on a mismatch
            return f"does not load into {spec.title} without its top ({_first_line(error)})"
    return ""


def count_saved_layers(path: Path) -> int:
    """How many layers with weights a Keras .h5 weights file holds, counted as Keras counts them."""
    import h5py

    try:
        with h5py.File(path, "r") as stored:
            if "layer_names" not in stored.attrs and "model_weights" in stored:
                stored = stored["model_weights"]  # a whole model saved as .h5: its weights are in here
            names = _attribute(stored, "layer_names")
            if not names:
                raise ValueError("an HDF5 file without layer_names, not a Keras weights file")
            return sum(1 for name in names if name in stored and _attribute(stored[name], "weight_names"))
    # h5py's answers to a file that is not HDF5, is cut short, or is damaged inside.
    except (OSError, KeyError, RuntimeError):
        raise ValueError("not an HDF5 weights file (or a damaged one)") from None


def _attribute(group, name: str) -> list[str]:
    """A list attribute of an HDF5 group; Keras splits a long one into ``name0``, ``name1``..."""
    chunks = (
        [name]
        if name in group.attrs
        else itertools.takewhile(lambda key: key in group.attrs, (f"{name}{i}" for i in itertools.count()))
    )
    return [v.decode("utf8") if hasattr(v, "decode") else str(v) for key in chunks for v in group.attrs[key]]


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:200] if lines else type(error).__name__


def backbone_of_file(path: Path) -> tuple[str, int]:
    """Which backbone a weights file belongs to, and an input size it is for, by its name (as Keras
    names them)."""
    for name, spec in BACKBONES.items():
        for size in (96, 128, 160, 192, 224):
            if path.name == spec.weights_file(size):
                return name, size
    known = ", ".join(sorted({spec.weights_file(224) for spec in BACKBONES.values()}))
    raise ValueError(f"{path}: not a file name Keras gives ImageNet weights (expected one of {known})")


def import_weights(path: str | Path) -> Path:
    """Check ``path`` and copy it into Keras' cache, where an offline run finds it."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    backbone, img_size = backbone_of_file(path)
    problem = check_weights_file(path, backbone, img_size, try_loading=True)
    if problem:
        raise ValueError(f"{path}: {problem}; refused")
    target = keras_home() / "models" / path.name
    return replace_from_writer(target, lambda tmp: shutil.copyfile(path, tmp))


def fetch_weights(backbone: str, img_size: int = 224) -> Path:
    """Download one backbone's ImageNet file into Keras' cache (checked by Keras' md5)."""
    from bcnb.model.transfer import resolve_weights

    path, _ = resolve_weights("imagenet", False, backbone, img_size)
    return Path(path)


def status(img_size: int = 224) -> list[dict]:
    """Each backbone's ImageNet file: where it must be, whether it is there, and how far it checks out."""
    rows = []
    for name in BACKBONES:
        path = imagenet_weights_path(name, img_size)
        problem = check_weights_file(path, name, img_size)
        rows.append({"backbone": name, "file": str(path), "status": problem or _passed(name)})
    return rows


def _passed(backbone: str) -> str:
    """What a file that passed its check can be called: verified only by a published md5."""
    if get_backbone(backbone).md5 is None:
        return "present, not verified (no published checksum)"
    return "present and verified"
