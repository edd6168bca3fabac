"""The built-in dataset: H&E-like tissue images generated from a seed.

No real dataset can be shipped or downloaded everywhere, so bcnb draws its own: pink
stroma, white lumens, purple-blue nuclei and glands, written as PNG files in BreakHis'
folder layout and file naming. Every patient has a hidden *grade* between 0 (benign-looking)
and 1 (malignant-looking): malignant tissue gets denser, larger, more irregular and darker
nuclei and fewer glands. Benign and malignant grades overlap more as ``difficulty`` grows, so
a good classifier lands well below 100% and the confusion matrix has something to show.

The images are a teaching stand-in, not a model of real pathology.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from bcnb.config import synthetic_problems
from bcnb.run.files import make_temporary_folder

# Bump when the drawing changes, so cached datasets from older code are not reused.
GENERATOR_VERSION = 2  # 2: each tumour type has a look of its own (task=subtype)

# Half of BreakHis' 700x460 frames: the same aspect ratio, four times fewer pixels to draw.
IMAGE_WIDTH, IMAGE_HEIGHT = 350, 230

MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
# How much bigger a nucleus looks at each magnification, relative to 40X.
ZOOM = {"40X": 1.0, "100X": 1.6, "200X": 2.4, "400X": 3.4}

# Tumour subtypes of BreakHis: (folder name, code in the file name).
SUBTYPES = {
    "benign": [
        ("adenosis", "A"),
        ("fibroadenoma", "F"),
        ("phyllodes_tumor", "PT"),
        ("tubular_adenoma", "TA"),
    ],
    "malignant": [
        ("ductal_carcinoma", "DC"),
        ("lobular_carcinoma", "LC"),
        ("mucinous_carcinoma", "MC"),
        ("papillary_carcinoma", "PC"),
    ],
}

# BreakHis has 24 benign and 58 malignant patients; keep about that share of benign ones.
BENIGN_PATIENT_SHARE = 24 / 82


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated images (and so the cache key)."""

    patients: int = 40
    images_per_patient: int = 3
    difficulty: float = 0.5
    seed: int = 0
    scale: int = 1  # 2 writes BreakHis' own 700x460 frames (benchmarks at BreakHis' size)

    def cache_key(self) -> str:
        """A short hash of the spec and the generator version."""
        text = repr((GENERATOR_VERSION, sorted(asdict(self).items())))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """Where generated datasets live: ``$BCNB_CACHE`` or ``~/.cache/bcnb``."""
    root = os.environ.get("BCNB_CACHE") or Path.home() / ".cache" / "bcnb"
    return Path(root) / "synthetic"


def ensure_synthetic_dataset(spec: SyntheticSpec, cache_dir: Path | None = None) -> Path:
    """Return the folder of the dataset for ``spec``, generating it on first use.

    The dataset is written to a temporary folder and renamed into place, so an
    interrupted generation never leaves a half-written dataset behind.
    """
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / f"breakhis_like-{spec.cache_key()}"
    if (target / "manifest.csv").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = make_temporary_folder(".generating-", cache_dir)
    try:
        write_synthetic_dataset(spec, staging)
        os.replace(staging, target)
    except OSError:
        # Another process finished the same dataset first: theirs is as good as ours.
        if not (target / "manifest.csv").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_synthetic_dataset(spec: SyntheticSpec, root: Path) -> pd.DataFrame:
    """Draw every image of ``spec`` under ``root`` and write ``root/manifest.csv``."""
    _check_spec(spec)
    rng = np.random.default_rng(spec.seed)
    rows = []
    for patient in _draw_patients(spec, rng):
        for magnification in MAGNIFICATIONS:
            for index in range(1, spec.images_per_patient + 1):
                look = LOOKS[patient["code"]]
                image = render_tissue(rng, patient["grade"], ZOOM[magnification], patient["stain"], look)
                if spec.scale > 1:
                    size = (IMAGE_WIDTH * spec.scale, IMAGE_HEIGHT * spec.scale)
                    image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
                rel_path = _breakhis_path(patient, magnification, index)
                (root / rel_path).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(root / rel_path, optimize=False, compress_level=1)
                rows.append(
                    {
                        "path": rel_path.as_posix(),
                        "label": patient["label"],
                        "subtype": patient["code"],
                        "patient_id": patient["patient_id"],
                        "magnification": magnification,
                        "grade": round(patient["grade"], 4),
                    }
                )
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


def _check_spec(spec: SyntheticSpec) -> None:
    for problem in synthetic_problems(spec.patients, spec.images_per_patient, spec.difficulty):
        raise ValueError(problem)


def _draw_patients(spec: SyntheticSpec, rng: np.random.Generator) -> list[dict]:
    """Give each patient a label, subtype, id, hidden grade and stain colour."""
    n_benign = max(3, round(spec.patients * BENIGN_PATIENT_SHARE))
    # The spread of grades within a class: wider spread, more overlap between classes.
    spread = 0.05 + 0.2 * spec.difficulty
    patients = []
    for number in range(spec.patients):
        label = "benign" if number < n_benign else "malignant"
        folder, code = SUBTYPES[label][number % 4]
        centre = 0.3 if label == "benign" else 0.7
        patients.append(
            {
                "label": label,
                "folder": folder,
                "code": code,
                # Synthetic ids use the year "00", which no real BreakHis slide has.
                "patient_id": f"00-{1001 + number}",
                "grade": float(np.clip(rng.normal(centre, spread), 0.0, 1.0)),
                # Stain strength differs between labs and slides, not between classes.
                "stain": float(rng.normal(1.0, 0.06)),
            }
        )
    return patients


def _breakhis_path(patient: dict, magnification: str, index: int) -> Path:
    """BreakHis' own path, e.g. .../SOB_B_A_00-1001/40X/SOB_B_A-00-1001-40-001.png."""
    kind = "B" if patient["label"] == "benign" else "M"
    slide = f"SOB_{kind}_{patient['code']}_{patient['patient_id']}"
    name = f"SOB_{kind}_{patient['code']}-{patient['patient_id']}-{magnification[:-1]}-{index:03d}.png"
    return (
        Path("BreaKHis_v1/histology_slides/breast")
        / patient["label"]
        / "SOB"
        / patient["folder"]
        / slide
        / magnification
        / name
    )


# --------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class Look:
    """How a tumour type's fields differ from the others', beyond the grade (benign- or
    malignant-looking nuclei): its glands, its scattered nuclei, mucin."""

    glands: float = 1.0  # how many glands, relative
    gland_size: float = 1.0  # their radius, relative
    gland_aspect: float = 0.7  # a lumen's height over its width: 1 round, 0.2 a slit
    nuclei: float = 1.0  # how many scattered nuclei, relative
    nucleus_size: float = 1.0
    rows: bool = False  # crowded nuclei in single-file lines instead of sheets
    mucin: bool = False  # white spaces filled with pale blue mucin, and more of them


# Caricatures of each type's textbook pattern, drawn so that the types differ, but (with the
# grade's spread and each image's own noise) not so much that one glance tells them apart.
LOOKS = {
    "A": Look(glands=2.2, gland_size=0.7),  # adenosis: many small, crowded glands
    "F": Look(glands=0.8, gland_aspect=0.25, nuclei=0.7),  # fibroadenoma: slit-like ducts in stroma
    "PT": Look(glands=0.7, gland_size=1.7, gland_aspect=0.2, nuclei=1.4),  # phyllodes: leaf-like clefts
    "TA": Look(glands=3.5, gland_size=0.45, gland_aspect=1.0),  # tubular adenoma: packed small tubules
    "DC": Look(glands=0.4, nuclei=1.2),  # ductal carcinoma: solid sheets of cells
    "LC": Look(glands=0.3, nucleus_size=0.75, rows=True),  # lobular: small cells in single file
    "MC": Look(glands=0.3, nuclei=0.6, mucin=True),  # mucinous: cell clusters floating in mucin
    "PC": Look(glands=1.0, gland_size=1.5, gland_aspect=0.9),  # papillary: large spaces with fronds
}
PLAIN = Look()
STROMA = np.array([236.0, 166.0, 200.0])  # eosin pink
LUMEN = np.array([246.0, 238.0, 246.0])  # empty space, nearly white
MUCIN = np.array([206.0, 212.0, 234.0])  # pale blue-grey extracellular mucin
NUCLEUS_LIGHT = np.array([150.0, 110.0, 190.0])  # pale, open chromatin
NUCLEUS_DARK = np.array([62.0, 38.0, 120.0])  # hyperchromatic


def render_tissue(
    rng: np.random.Generator, grade: float, zoom: float, stain: float = 1.0, look: Look = PLAIN
) -> np.ndarray:
    """Draw one H&E-like field of view as a (height, width, 3) uint8 array.

    ``grade`` (0 benign-like .. 1 malignant-like) sets nuclear density, size, shape and
    darkness; ``zoom`` is the magnification relative to 40X; ``stain`` scales how strongly
    the dyes took, a nuisance that varies by patient; ``look`` is the tumour type's pattern.
    """
    grade = float(np.clip(grade + rng.normal(0, 0.04), 0, 1))  # image-to-image variation
    canvas = _stroma(rng, stain, look.mucin)
    layer = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    n_glands = rng.poisson((2.5 * (1.2 - grade) + 0.3) * look.glands)
    for _ in range(n_glands):
        _draw_gland(draw, rng, grade, zoom, look)
    _draw_nuclei(draw, rng, grade, zoom, look)
    layer = layer.filter(ImageFilter.GaussianBlur(radius=0.7))
    pixels = np.asarray(layer, dtype=np.float32) + rng.normal(0, 3.0, size=canvas.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, cell: int) -> np.ndarray:
    """Noise in [-1, 1] that varies over about ``cell`` pixels (bicubic upsampling)."""
    small = rng.uniform(-1, 1, size=(IMAGE_HEIGHT // cell + 2, IMAGE_WIDTH // cell + 2))
    image = Image.fromarray(((small + 1) * 127.5).astype(np.uint8))
    big = image.resize((IMAGE_WIDTH, IMAGE_HEIGHT), Image.Resampling.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1


def _stroma(rng: np.random.Generator, stain: float, mucin: bool = False) -> np.ndarray:
    """Pink connective tissue with patchy density and a few white spaces (pools of mucin,
    more of them, for a mucinous tumour)."""
    density = _smooth_noise(rng, 40)
    fibres = _smooth_noise(rng, 6)
    pink = 255 - (255 - STROMA) * stain * (1 + 0.25 * density[..., None] + 0.1 * fibres[..., None])
    # Where the smooth field is low the section is thin or torn: white space.
    holes = np.clip((-density - (0.3 if mucin else 0.55)) * 4, 0, 1)[..., None]
    return pink * (1 - holes) + (MUCIN if mucin else LUMEN) * holes


def _draw_gland(draw: ImageDraw.ImageDraw, rng: np.random.Generator, grade: float, zoom: float, look: Look):
    """A lumen lined by one orderly row of small nuclei: the mark of benign architecture."""
    cx, cy = rng.uniform(0, IMAGE_WIDTH), rng.uniform(0, IMAGE_HEIGHT)
    radius = rng.uniform(8, 18) * zoom * look.gland_size
    aspect = look.gland_aspect
    draw.ellipse(
        [cx - radius, cy - radius * aspect, cx + radius, cy + radius * aspect], fill=tuple(LUMEN.astype(int))
    )
    n_lining = int(2 * np.pi * radius / (4.5 * zoom))
    for angle in np.linspace(0, 2 * np.pi, n_lining, endpoint=False):
        x = cx + (radius + 2 * zoom) * np.cos(angle)
        y = cy + (radius + 2 * zoom) * aspect * np.sin(angle)
        _draw_nucleus(draw, rng, x, y, 1.6 * zoom, irregularity=0.05, darkness=0.4 + 0.3 * grade)


def _draw_nuclei(draw: ImageDraw.ImageDraw, rng: np.random.Generator, grade: float, zoom: float, look: Look):
    """Scattered nuclei whose number, size, shape and colour follow the grade."""
    per_pixel = (0.0025 + 0.0075 * grade) / zoom**2 * look.nuclei
    count = rng.poisson(per_pixel * IMAGE_WIDTH * IMAGE_HEIGHT)
    # Malignant nuclei crowd into sheets: sample some of them around a few cluster centres.
    centres = rng.uniform([0, 0], [IMAGE_WIDTH, IMAGE_HEIGHT], size=(1 + rng.poisson(3 * grade), 2))
    clustered = rng.random(count) < 0.6 * grade
    spread = 25 * np.sqrt(zoom)
    for is_clustered in clustered:
        if is_clustered:  # around a centre: a sheet, or for lobular cells a single-file line
            x, y = centres[rng.integers(len(centres))] + rng.normal(0, spread, 2) * (
                (3, 0.08) if look.rows else 1
            )
        else:
            x, y = rng.uniform(0, IMAGE_WIDTH), rng.uniform(0, IMAGE_HEIGHT)
        size = zoom * (1.4 + 1.4 * grade) * rng.lognormal(0, 0.1 + 0.25 * grade) * look.nucleus_size
        darkness = float(np.clip(rng.normal(0.35 + 0.55 * grade, 0.12), 0, 1))
        _draw_nucleus(draw, rng, x, y, size, irregularity=0.05 + 0.35 * grade, darkness=darkness)


def _draw_nucleus(draw, rng, x, y, radius, irregularity, darkness):
    """An ellipse whose outline is jittered by ``irregularity`` (0 round .. 1 ragged)."""
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    elongation = 1 + rng.uniform(0, 0.5)
    tilt = rng.uniform(0, np.pi)
    r = radius * (1 + irregularity * rng.uniform(-1, 1, size=angles.size))
    dx, dy = r * np.cos(angles) * elongation, r * np.sin(angles) / elongation
    xs = x + dx * np.cos(tilt) - dy * np.sin(tilt)
    ys = y + dx * np.sin(tilt) + dy * np.cos(tilt)
    colour = NUCLEUS_LIGHT + (NUCLEUS_DARK - NUCLEUS_LIGHT) * darkness
    draw.polygon(list(zip(xs, ys)), fill=tuple(colour.astype(int)))


# --------------------------------------------------------------------------- IDC-like
IDC_PATCH = 50  # the IDC patches are 50x50 pixels


def write_idc_like_dataset(root: Path, n_images: int, seed: int = 0) -> pd.DataFrame:
    """``n_images`` 50x50 patches in the IDC layout, ``<patient>/<0|1>/<patient>_idx5_x.._y.._classC.png``.

    For benchmarks at scale (and tests of the IDC reader): patches are cut from generated
    fields, class 1 from malignant-looking tissue; a third of the patients have no class 1.
    """
    rng = np.random.default_rng(seed)
    n_patients = max(10, n_images // 250)
    rows = []
    for number in range(n_patients):
        patient = str(10000 + number)
        positive_share = rng.uniform(0.1, 0.8) if number % 3 else 0.0
        wanted = n_images // n_patients + (number < n_images % n_patients)
        while wanted > 0:
            cls = int(rng.random() < positive_share)
            field = render_tissue(rng, 0.75 if cls else 0.25, zoom=1.0, stain=float(rng.normal(1, 0.06)))
            for patch_x, patch_y in _patch_corners(min(wanted, 28)):
                x, y = len(rows) * IDC_PATCH, patch_y  # x keeps names unique within a patient
                path = Path(patient) / str(cls) / f"{patient}_idx5_x{x}_y{y}_class{cls}.png"
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                patch = field[patch_y : patch_y + IDC_PATCH, patch_x : patch_x + IDC_PATCH]
                Image.fromarray(patch).save(root / path, compress_level=1)
                rows.append(
                    {"path": path.as_posix(), "label": ("benign", "malignant")[cls], "patient_id": patient}
                )
                wanted -= 1
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


def _patch_corners(count: int) -> list[tuple[int, int]]:
    """Top-left corners of up to 28 non-overlapping 50x50 patches of a 350x230 field."""
    corners = [
        (x, y)
        for y in range(0, IMAGE_HEIGHT - IDC_PATCH + 1, IDC_PATCH)
        for x in range(0, IMAGE_WIDTH - IDC_PATCH + 1, IDC_PATCH)
    ]
    return corners[:count]
