"""The real data sets by one command: fetched, resumed, checked against the published
figures, and unpacked safely.

``bcnb download breakhis --to data`` streams the archive into ``data/NAME.part`` (an
interrupted download resumes from there with an HTTP Range request), refuses an HTML page
served instead of an archive, unpacks into a temporary folder inside ``data`` refusing any
member that would land outside it (``../``, absolute paths, links pointing out: zip-slip and
tar-slip), counts what it holds against the published figures, and only then renames it into
place and writes ``data/download.json`` (the archive's SHA-256 and what was found). A failure
leaves nothing half-unpacked; only a partial ``.part`` file stays, to resume. A downloaded
archive that fails a check (damaged, unsafe, not the data set) is moved aside to ``NAME.bad``,
so the next run downloads it again rather than reuse it; an ``--archive`` of the user's own is
only named. One download at a time holds ``data`` (a lock file beside it), so a second is
refused at once, naming the first.

Mirrors package the same images differently, so the *contents* are checked, not the archive's
hash. A source that needs an account (the IDC patches on Kaggle) is named with the manual steps.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import posixpath
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bcnb.run.files import write_json_atomic
from bcnb.run.folder import check_writable
from bcnb.run.lock import RunLock

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


class BadArchive(ValueError):
    """The archive itself is wrong: not an archive, damaged, unsafe, or not the data set."""


def download(
    source: Source,
    to: str | Path,
    url: str = "",
    archive: str | Path = "",
    progress: Callable[[str], None] = lambda message: None,
    bar: bool = False,
) -> Path:
    """Fetch (or take ``archive``), check and unpack ``source`` into ``to``; return the unpacked folder."""
    to = Path(to).expanduser().resolve()
    given = Path(archive).expanduser().resolve() if archive else None
    if given is not None and not given.is_file():
        raise FileNotFoundError(f"--archive: {given} does not exist")
    url = "" if given else url or source.url
    if given is None and not url:
        raise NeedsAccount(f"{source.name}: {source.account}")
    try:
        check_target_folder(to)
        lock = _lock(to)
        try:
            return _download_into(source, to, url, given, progress, bar)
        finally:
            lock.release()
    except OSError as error:  # what no step foresaw (a full disk): one line naming the file
        raise ValueError(f"{error.filename or to}: {error.strerror or error}") from None


def check_target_folder(to: Path) -> None:
    """Refuse a ``--to`` that is a file, or that this process can neither write nor create."""
    if to.exists() and not to.is_dir():
        raise ValueError(f"--to: {to} is a file, expected a folder")
    existing = next(folder for folder in (to, *to.parents) if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"--to: cannot create {to}: {existing} is a file")
    check_writable(existing, "--to")


def _lock(to: Path) -> RunLock:
    """Hold ``to`` for this download, so that a second one into it is refused at once."""
    lock = RunLock(to, "bcnb download")
    try:
        return lock.acquire()
    except OSError as error:  # the lock file lives beside ``to``, in its parent
        raise ValueError(
            f"--to: cannot lock {to}: {lock.path} cannot be written ({error.strerror})"
        ) from None


def _download_into(
    source: Source, to: Path, url: str, given: Path | None, progress: Callable[[str], None], bar: bool
) -> Path:
    """The download itself, with ``to`` checked and held."""
    to.mkdir(parents=True, exist_ok=True)
    path = given or fetch(url, to / source.archive, progress, bar)
    try:
        check_is_archive(path, source)
        progress(f"unpacking {path.name} into {to}")
        unpacked, contents = unpack_checked(path, to, source)
    except BadArchive as error:
        if given:  # the user's own file: named, never moved
            raise
        raise BadArchive(f"{error}; {set_aside(path)}") from None
    record = {
        "source": source.name,
        "url": url,
        "archive": str(path),
        "sha256": sha256_of(path),
        "bytes": path.stat().st_size,
        "unpacked": unpacked.name,
        "found": contents,
        "published": asdict(source.published),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json_atomic(to / DOWNLOAD_RECORD, record)
    return unpacked


def set_aside(path: Path) -> str:
    """Rename a downloaded archive that failed its check to NAME.bad (replacing an older one), so
    that the next run downloads it again instead of reusing it; say so."""
    bad = path.with_name(path.name + ".bad")
    os.replace(path, bad)
    return f"moved aside to {bad.name}: the next run downloads it again"


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

    try:
        with (
            open(part, mode) as out,
            tqdm(
                total=total or None, initial=have, unit="B", unit_scale=True, disable=not bar, file=sys.stderr
            ) as shown,
        ):
            for chunk in _chunks(response, part):
                out.write(chunk)
                shown.update(len(chunk))
    except OSError as error:  # a full disk shows on a write or only on close, when the buffer is flushed
        raise ValueError(
            f"{part}: cannot write ({error.strerror}); the part downloaded so far is kept: free some "
            "space and run the same command again to resume"
        ) from None


def _chunks(response, part: Path):
    """The response's body in chunks; a broken connection raised as a ValueError, so that the
    caller does not take it for a failed write."""
    while True:
        try:
            chunk = response.read(CHUNK)
        except (OSError, ConnectionError) as error:
            raise ValueError(
                f"{part}: the download broke off ({error}); run the same command again to resume"
            ) from None
        if not chunk:
            return
        yield chunk


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
    raise BadArchive(
        f"{path}: {what}, not the {source.name} archive ({source.archive}); check the URL or use --archive"
    )


def unpack_checked(archive: Path, to: Path, source: Source) -> tuple[Path, dict]:
    """Unpack into a temporary folder in ``to``, count, and rename the top folder into place."""
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=to))
    try:
        _extract(archive, staging, to)
        contents = count_contents(staging, source)
        _compare(contents, source.published, archive, source)
        top = _top_folder(staging)
        target = to / top.name
        if target.exists():
            raise ValueError(f"{target} already exists; remove it (or choose another --to) to unpack again")
        os.replace(top, target)
        return target, contents
    except OSError as error:  # a full disk, most likely: the archive itself is fine, so it stays
        raise ValueError(
            f"{error.filename or to}: cannot unpack ({error.strerror or error}); nothing was unpacked "
            f"and {archive.name} is kept: free some space and run the same command again"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# What tarfile, gzip, lzma and zipfile raise on an archive cut short or corrupted.
DAMAGED = (EOFError, tarfile.TarError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, zipfile.BadZipFile)


def _extract(archive: Path, staging: Path, to: Path) -> None:
    """Check every member, then unpack them all into ``staging``; a damaged archive is a BadArchive."""
    try:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                _check_members(archive, to, [_tar_entry(archive, member) for member in tar.getmembers()])
                tar.extractall(staging, filter="data")
            return
        with zipfile.ZipFile(archive) as zipped:
            _check_members(archive, to, [_zip_entry(zipped, info) for info in zipped.infolist()])
            zipped.extractall(staging)
    except tarfile.FilterError as error:  # tarfile's own guard, behind ours
        raise BadArchive(f"{archive}: member {error.tarinfo.name} refused ({error})") from None
    except DAMAGED as error:
        raise BadArchive(f"{archive}: damaged or truncated archive ({error})") from None


def _tar_entry(archive: Path, member: tarfile.TarInfo) -> tuple[str, str, str]:
    """(name, kind, link target) of a tar member; a device or pipe is refused."""
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise BadArchive(f"{archive}: member {member.name} is a device or pipe (refused)")
    kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "file"
    return member.name, kind, member.linkname


def _zip_entry(zipped: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, str, str]:
    """(name, kind, link target) of a zip member (a link is stored as a file holding its target)."""
    if (info.external_attr >> 16) & 0o170000 == 0o120000:
        return info.filename, "symlink", zipped.read(info).decode(errors="replace")
    return info.filename, "file", ""


def _check_members(archive: Path, to: Path, entries: list[tuple[str, str, str]]) -> None:
    """Refuse a member, or a link's target, that would land outside ``to``, following the archive's
    own links as the system would once they are unpacked (a link to a link that leads out)."""
    links = {_key(name): target for name, kind, target in entries if kind == "symlink"}
    for name, kind, target in entries:
        if os.path.isabs(name) or not _stays_inside(name, links, own=name if kind == "symlink" else ""):
            raise BadArchive(f"{archive}: member {name} would land outside {to} (refused)")
        # A symbolic link points from its own folder; a hard link names a member from the top.
        pointed = f"{posixpath.dirname(name)}/{target}" if kind == "symlink" else target
        if kind != "file" and (os.path.isabs(target) or not _stays_inside(pointed, links)):
            raise BadArchive(f"{archive}: link {name} points outside {to} (to {target}; refused)")


MAX_LINK_HOPS = 40  # as Linux follows at most 40 links in one path: beyond, a loop


def _stays_inside(path: str, links: dict[str, str], own: str = "") -> bool:
    """Whether ``path``, relative to the unpacking folder, stays inside it once ``links`` (the
    archive's symbolic links, except ``own``) are followed as the system follows them."""
    done: list[str] = []
    todo = path.split("/")
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not done:
                return False
            done.pop()
            continue
        done.append(part)
        key = "/".join(done)
        if key in links and key != _key(own):
            hops += 1
            if os.path.isabs(links[key]) or hops > MAX_LINK_HOPS:
                return False
            done.pop()  # a link's target is read from the link's own folder
            todo[:0] = links[key].split("/")
    return True


def _key(name: str) -> str:
    """A member's name as the folders it goes through, without empty or "." parts."""
    return "/".join(part for part in name.split("/") if part not in ("", "."))


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
    from bcnb.data.layouts import read_layout

    try:
        table = read_layout(folder, source.layout).table
    except ValueError:
        return {"images": 0}
    images = table[table["label"] != ""]
    contents = {
        "images": int(images["path"].nunique()),
        "benign": int((images["label"] == "benign").sum()),
        "malignant": int((images["label"] == "malignant").sum()),
        "magnifications": sorted(set(images["magnification"]) - {"unknown"}),
    }
    if source.layout == "breakhis":  # slide numbers, and one patient per tumour-type folder
        contents["patients_by_slide_number"] = int(images["patient_id"].nunique())
        contents["patients_by_folder"] = int((images["subtype"] + "-" + images["patient_id"]).nunique())
    else:
        contents["patients"] = int(images["patient_id"].nunique())
    return contents


def _compare(contents: dict, published: Published, archive: Path, source: Source) -> None:
    differ = [
        f"{name} {contents.get(name)} (published {expected})"
        for name, expected in asdict(published).items()
        if name not in ("patients", "magnifications")
        and expected is not None
        and contents.get(name) != expected
    ]
    if published.magnifications and contents.get("magnifications") != sorted(published.magnifications):
        differ.append(
            f"magnifications {contents.get('magnifications')} (published {list(published.magnifications)})"
        )
    if differ:
        raise BadArchive(f"{archive}: not the published {source.name}: {', '.join(differ)}")


def patients_note(contents: dict, published: Published) -> str:
    """One line on the patients found, since BreakHis' slide codes can be read two ways."""
    if "patients_by_slide_number" not in contents:
        return f"{contents.get('patients')} patients"
    return (
        f"{contents['patients_by_slide_number']} patients by slide number, "
        f"{contents['patients_by_folder']} by patient folder ({published.patients} published); "
        "see patient_id_from in data_instructions.md"
    )
