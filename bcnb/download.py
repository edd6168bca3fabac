"""The real data sets by one command: fetched, resumed, checked against the published
figures, and unpacked safely.

``bcnb download breakhis --to data`` streams the archive into ``data/NAME.part`` (an
interrupted download resumes from there with an HTTP Range request), refuses an HTML page
served instead of an archive, unpacks into a temporary folder inside ``data`` refusing any
member that would land outside it (``../``, absolute paths, links pointing out: zip-slip and
tar-slip), counts what it holds against the published figures, and only then renames it into
place and writes ``data/download.json`` (the archive's SHA-256 and what was found). A failure
leaves nothing half-unpacked; only a partial ``.part`` file stays, to resume.

Mirrors package the same images differently, so the *contents* are checked, not the archive's
hash. A source that needs an account (the IDC patches on Kaggle) is named with the manual steps.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bcnb.files import write_json_atomic

DOWNLOAD_RECORD = "download.json"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Published:
    """What the data set's authors report it holds."""

    images: int
    benign: int | None = None
    malignant: int | None = None
    magnifications: tuple[str, ...] = ()
    patients: int | None = None


@dataclass(frozen=True)
class Source:
    name: str
    archive: str  # the file name the archive is saved under
    layout: str  # how bcnb reads the unpacked images
    published: Published
    url: str = ""  # empty: no direct download (see account)
    account: str = ""  # the manual steps, where the source needs an account


SOURCES = {
    "breakhis": Source(
        "breakhis",
        "BreaKHis_v1.tar.gz",
        "breakhis",
        Published(7909, 2480, 5429, ("40X", "100X", "200X", "400X"), 82),
        # Where the VRI lab (UFPR) has served the archive; read its terms on
        # https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/
        url="http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz",
    ),
    "idc": Source(
        "idc",
        "breast-histopathology-images.zip",
        "idc",
        Published(277524),
        account=(
            "the IDC patches are on Kaggle, which needs an account: sign in, accept the data set's "
            "terms, run `kaggle datasets download -d paultimothymooney/breast-histopathology-images` "
            "(or download it from the page), then `bcnb download idc --archive "
            "breast-histopathology-images.zip --to DIR`"
        ),
    ),
}


class NeedsAccount(ValueError):
    """The source cannot be downloaded without an account; the message says what to do."""


def download(
    source: Source,
    to: str | Path,
    url: str = "",
    archive: str | Path = "",
    progress: Callable[[str], None] = lambda message: None,
    bar: bool = False,
) -> Path:
    """Fetch (or take ``archive``), check and unpack ``source`` into ``to``; return the unpacked folder."""
    to = Path(to).resolve()
    to.mkdir(parents=True, exist_ok=True)
    if archive:
        path = Path(archive).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--archive: {path} does not exist")
    else:
        url = url or source.url
        if not url:
            raise NeedsAccount(f"{source.name}: {source.account}")
        path = fetch(url, to / source.archive, progress, bar)
        try:
            check_is_archive(path, source)
        except ValueError:
            path.unlink()  # what the server sent is no part of the data set: nothing left in DIR
            raise
    check_is_archive(path, source)
    progress(f"unpacking {path.name} into {to}")
    unpacked, found = unpack_checked(path, to, source)
    record = {
        "source": source.name,
        "url": "" if archive else url,
        "archive": str(path),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "unpacked": unpacked.name,
        "found": found,
        "published": asdict(source.published),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json_atomic(to / DOWNLOAD_RECORD, record)
    return unpacked


# --------------------------------------------------------------------------- fetching
def fetch(
    url: str, target: Path, progress: Callable[[str], None] = lambda m: None, bar: bool = False
) -> Path:
    """Stream ``url`` into ``target.part``, resuming what is there, then rename it ``target``."""
    if target.is_file():
        progress(f"{target.name} is already here")
        return target
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # asked for bytes past the end: the part is whole
            os.replace(part, target)
            return target
        raise ValueError(f"--url: {url} answered HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ValueError(f"--url: cannot reach {url} ({reason})") from None
    with response:
        resumed = have and response.status == 206
        if have and not resumed:
            have = 0  # the server ignored the range: start over
        total = have + int(response.headers.get("Content-Length") or 0)
        progress(f"downloading {url}" + (f" (resuming after {have / 1e6:.1f} MB)" if resumed else ""))
        _stream(response, part, "ab" if resumed else "wb", have, total, bar)
    if total and part.stat().st_size < total:
        raise ValueError(
            f"{part}: the connection ended after {part.stat().st_size} of {total} bytes; "
            "run the same command again to resume"
        )
    os.replace(part, target)
    return target


def _stream(response, part: Path, mode: str, have: int, total: int, bar: bool) -> None:
    from tqdm import tqdm

    with (
        open(part, mode) as out,
        tqdm(
            total=total or None, initial=have, unit="B", unit_scale=True, disable=not bar, file=sys.stderr
        ) as shown,
    ):
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, ConnectionError) as error:
                raise ValueError(
                    f"{part}: the download broke off ({error}); run the same command again to resume"
                ) from None
            if not chunk:
                return
            try:
                out.write(chunk)
            except OSError as error:
                raise ValueError(
                    f"{part.parent}: cannot write {part.name} ({error.strerror}); the part "
                    "downloaded so far is kept to resume"
                ) from None
            shown.update(len(chunk))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- unpacking
def check_is_archive(path: Path, source: Source) -> None:
    """A tar (plain, gzip, bzip2 or xz) or zip file; an HTML page (an error or a login page a
    server sent instead) is named as such."""
    if tarfile.is_tarfile(path) or zipfile.is_zipfile(path):
        return
    start = path.read_bytes()[:512].lstrip().lower()
    what = "an HTML page" if start.startswith((b"<!doctype", b"<html")) else "not a tar or zip archive"
    raise ValueError(
        f"{path}: {what}, not the {source.name} archive ({source.archive}); check the URL or use --archive"
    )


def unpack_checked(archive: Path, to: Path, source: Source) -> tuple[Path, dict]:
    """Unpack into a temporary folder in ``to``, count, and rename the top folder into place."""
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=to))
    try:
        _extract(archive, staging, to)
        found = count_contents(staging, source)
        _compare(found, source.published, archive, source)
        top = _top_folder(staging)
        target = to / top.name
        if target.exists():
            raise ValueError(f"{target} already exists; remove it (or choose another --to) to unpack again")
        os.replace(top, target)
        return target, found
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: Path, staging: Path, to: Path) -> None:
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _check_member(
                    member.name, archive, to, staging, member.issym() or member.islnk(), member.linkname
                )
                if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
                    raise ValueError(f"{archive}: member {member.name} is a device or pipe (refused)")
            tar.extractall(staging, filter="data")
        return
    with zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
            _check_member(info.filename, archive, to, staging, is_link, zipped.read(info) if is_link else "")
        zipped.extractall(staging)


def _check_member(name: str, archive: Path, to: Path, staging: Path, is_link: bool, link_target) -> None:
    """Refuse a member (or a link's target) that would land outside the folder."""
    landing = (staging / name).resolve()
    if os.path.isabs(name) or not landing.is_relative_to(staging.resolve()):
        raise ValueError(f"{archive}: member {name} would land outside {to} (refused)")
    if is_link:
        target = link_target.decode() if isinstance(link_target, bytes) else link_target
        pointed = (landing.parent / target).resolve()
        if os.path.isabs(target) or not pointed.is_relative_to(staging.resolve()):
            raise ValueError(f"{archive}: link {name} points outside {to} (to {target}; refused)")


def _top_folder(staging: Path) -> Path:
    entries = [p for p in staging.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    folder = staging / "unpacked"  # several top-level entries: keep them together
    folder.mkdir()
    for entry in entries:
        os.replace(entry, folder / entry.name)
    return folder


def count_contents(folder: Path, source: Source) -> dict:
    """What the unpacked archive holds, read as bcnb will read it."""
    from bcnb.layouts import read_layout

    try:
        table = read_layout(folder, source.layout).table
    except ValueError:
        return {"images": 0}
    images = table[table["label"] != ""]
    found = {
        "images": int(images["path"].nunique()),
        "benign": int((images["label"] == "benign").sum()),
        "malignant": int((images["label"] == "malignant").sum()),
        "magnifications": sorted(set(images["magnification"]) - {"unknown"}),
    }
    if source.layout == "breakhis":  # slide numbers, and one patient per tumour-type folder
        found["patients_by_slide_number"] = int(images["patient_id"].nunique())
        found["patients_by_folder"] = int((images["subtype"] + "-" + images["patient_id"]).nunique())
    else:
        found["patients"] = int(images["patient_id"].nunique())
    return found


def _compare(found: dict, published: Published, archive: Path, source: Source) -> None:
    differ = [
        f"{name} {found.get(name)} (published {expected})"
        for name, expected in asdict(published).items()
        if name not in ("patients", "magnifications") and expected is not None and found.get(name) != expected
    ]
    if published.magnifications and found.get("magnifications") != sorted(published.magnifications):
        differ.append(
            f"magnifications {found.get('magnifications')} (published {list(published.magnifications)})"
        )
    if differ:
        raise ValueError(f"{archive}: not the published {source.name}: {', '.join(differ)}")


def patients_note(found: dict, published: Published) -> str:
    """One line on the patients found, since BreakHis' slide codes can be read two ways."""
    if "patients_by_slide_number" not in found:
        return f"{found.get('patients')} patients"
    return (
        f"{found['patients_by_slide_number']} patients by slide number, {found['patients_by_folder']} by "
        f"patient folder ({published.patients} published); see patient_id_from in data_instructions.md"
    )
