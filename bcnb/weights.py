"""The ImageNet weights as a step of their own: fetch, import a copy, and see what is there.

Keras keeps each backbone's ImageNet file in its cache (``~/.keras/models/`` or
``$KERAS_HOME/models/``) and checks it against the md5 its own source records. A classroom
without internet can fill that cache from one downloaded copy: ``bcnb weights import FILE``
checks the file the same way before putting it in place, so a wrong or truncated copy is
refused instead of quietly giving every student random weights.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from bcnb.backbones import BACKBONES, get_backbone
from bcnb.files import replace_from_writer
from bcnb.model import imagenet_weights_path, keras_home

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def md5_of(path: Path) -> str:
    digest = hashlib.md5()  # the checksum Keras records for its weights files, not for security
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_weights_file(path: Path, backbone: str) -> str:
    """ "" if ``path`` is the backbone's ImageNet file, else what is wrong with it."""
    spec = get_backbone(backbone)
    if not path.is_file():
        return "missing"
    if spec.md5 is None:  # Keras records no md5 for this one: at least an HDF5 file
        with open(path, "rb") as stream:
            return "" if stream.read(8) == HDF5_SIGNATURE else "not an HDF5 weights file"
    found = md5_of(path)
    return "" if found == spec.md5 else f"md5 {found}, expected {spec.md5} (a wrong or truncated file)"


def backbone_of_file(path: Path) -> str:
    """Which backbone a weights file belongs to, by its name (as Keras names them)."""
    for name, spec in BACKBONES.items():
        if path.name in {spec.weights_file(size) for size in (96, 128, 160, 192, 224)}:
            return name
    known = ", ".join(sorted({spec.weights_file(224) for spec in BACKBONES.values()}))
    raise ValueError(f"{path}: not a file name Keras gives ImageNet weights (expected one of {known})")


def import_weights(path: str | Path) -> Path:
    """Check ``path`` and copy it into Keras' cache, where an offline run finds it."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    backbone = backbone_of_file(path)
    problem = check_weights_file(path, backbone)
    if problem:
        raise ValueError(f"{path}: {problem}; refused")
    target = keras_home() / "models" / path.name
    return replace_from_writer(target, lambda tmp: shutil.copyfile(path, tmp))


def fetch_weights(backbone: str, img_size: int = 224) -> Path:
    """Download one backbone's ImageNet file into Keras' cache (checked by Keras' md5)."""
    from bcnb.model import resolve_weights

    found, _ = resolve_weights("imagenet", False, backbone, img_size)
    return Path(found)


def status(img_size: int = 224) -> list[dict]:
    """Each backbone's ImageNet file: where it must be, and whether it is there and checks out."""
    rows = []
    for name in BACKBONES:
        path = imagenet_weights_path(name, img_size)
        problem = check_weights_file(path, name)
        rows.append(
            {
                "backbone": name,
                "file": str(path),
                "status": "present and verified" if not problem else problem,
            }
        )
    return rows
