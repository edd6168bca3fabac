"""One writer at a time: a lock file beside the run folder (``.NAME.lock``), held with ``flock``.

The operating system releases it when its process ends, however it ends, so a killed run never
blocks the folder. ``bcnb reproduce`` holds it alone for the whole run; notebooks hold it
together (a student steps through 01-06, each in its own kernel) for as long as their kernel
lives, so neither can start while the other writes. The kernels ``bcnb reproduce`` starts take
no lock (it holds the folder for them); a writer that takes the folder after a killed one
first waits for the kernels the killed one left there to end. ``bcnb extract --shard``
processes take no lock: each writes only its own shard file, by design side by side.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import socket
import time
from pathlib import Path

# bcnb reproduce sets this to the folder it holds when its kernels work in that folder itself.
HELD_BY_PARENT = "BCNB_RUN_FOLDER_HELD"


class RunFolderBusy(ValueError):
    """Another process is writing the run folder."""


_HELD: dict[Path, RunLock] = {}


def hold_for_notebook(run_dir: Path, notebook: str) -> None:
    """Share the run folder with the other notebooks until this kernel ends."""
    folder = Path(run_dir).resolve()
    if folder in _HELD or os.environ.get(HELD_BY_PARENT) == str(folder):
        return
    _HELD[folder] = RunLock(folder, f"the kernel of notebook {notebook}", shared=True).acquire()
    atexit.register(_HELD[folder].release)  # a kernel that is killed lets go all the same


# --------------------------------------------------------------------------- the lock
def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


class RunLock:
    """``flock`` on ``.NAME.lock`` beside the run folder: exclusive, or shared by notebooks.

    The file holds one JSON line per holder (process, host, what, since) so that a refused
    writer can say who holds the folder.
    """

    def __init__(self, folder: str | Path, what: str, shared: bool = False):
        self.folder = Path(folder).resolve()
        self.path = lock_path(self.folder)
        self.what = what
        self.shared = shared
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock now or raise RunFolderBusy naming the folder and its holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                holders = _live_holders(fd)
                os.close(fd)
                raise RunFolderBusy(
                    f"{self.folder} is being written by {holders}; wait for it to finish or stop it "
                    "(a notebook: shut down its kernel)"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # an exclusive holder removed the file as we opened it: take the new one
        self._fd = fd
        if not self.shared:
            self._outlive_stray_kernels()
        _write_holder(fd, self.what, truncate=not self.shared)
        return self

    def _outlive_stray_kernels(self) -> None:
        """Wait until no kernel of an earlier writer still works in the folder (or beside it,
        in its staging folders), or refuse: the lock alone cannot say so.

        A driver's kernels take no lock of their own (the driver holds it for them), and a
        driver killed outright lets go of the lock at once while its kernel lives on until
        ipykernel notices that its parent is gone (about a second; the kernels of the local
        Dask workers it started, about two): long enough to write into the folder the next
        writer has just taken. (Kernels on other machines cannot be seen here.)
        """
        deadline = time.monotonic() + STRAY_KERNEL_WAIT_S
        while strays := stray_kernels(self.folder):
            if time.monotonic() > deadline:
                self.release()
                raise RunFolderBusy(
                    f"{self.folder} is still being written by a Jupyter kernel of an earlier run "
                    f"(process {strays[0]}), which outlived it: stop that process first"
                )
            time.sleep(0.05)

    def release(self) -> None:
        """Let go; the last holder removes the lock file (while still holding it, so no one
        can be inside)."""
        if self._fd is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while others share it
            self.path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# How long a new writer waits for the kernels a killed one left (they end within about two
# seconds: ipykernel checks for its parent once a second; a local Dask worker, whose kernel
# then does the same, ends with its driver).
STRAY_KERNEL_WAIT_S = 10.0


def stray_kernels(folder: Path) -> list[int]:
    """The Jupyter kernels working in ``folder`` or its staging folders whose parent has gone:
    those a killed ``bcnb reproduce`` (or its local Dask workers) left, which end by themselves.
    A kernel whose parent lives (JupyterLab showing one of the run's notebooks, a running Dask
    worker keeping its kernel for its next run) writes nothing unless it runs a notebook, and
    then holds the lock itself."""
    return [pid for pid in kernels_working_in(folder) if _orphaned(pid)]


# How a Jupyter kernel's command line names it: python -m ipykernel_launcher -f ... (or the
# module itself, as older kernel specs had it).
KERNEL_MODULES = {b"ipykernel_launcher", b"ipykernel"}


def kernels_working_in(folder: Path) -> list[int]:
    """The Jupyter kernels on this machine working in ``folder`` or in one of its staging
    folders (``.NAME.*`` beside it), by their working folder; none where there is no /proc."""
    places = (str(folder), str(folder.parent / f".{folder.name}."))
    found = []
    for process in Path("/proc").glob("[0-9]*"):
        try:
            cwd = os.readlink(process / "cwd")
            if cwd == places[0] or cwd.startswith((places[0] + os.sep, places[1])):
                if KERNEL_MODULES & set((process / "cmdline").read_bytes().split(b"\0")):
                    found.append(int(process.name))
        except OSError:  # ended or ending (an exiting process, which runs no code of its own any
            continue  # more, loses its command line and folder before it is reaped), or not ours
    return found


def _orphaned(pid: int) -> bool:
    """Whether the process that started kernel ``pid`` has gone, as ipykernel itself tells:
    jupyter_client names the parent in the kernel's JPY_PARENT_PID."""
    try:
        environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        told = [int(entry.split(b"=", 1)[1]) for entry in environment if entry.startswith(b"JPY_PARENT_PID=")]
        return bool(told) and parent_of(pid) != told[0]
    except (OSError, ValueError, IndexError):  # ended meanwhile
        return False


def parent_of(pid: int) -> int:
    """The pid of process ``pid``'s parent, from /proc (OSError once it has ended)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(") ", 1)[1].split()[1])  # after "(name) ": the state, then the parent


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _write_holder(fd: int, what: str, truncate: bool) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    line = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what, "since": since}) + "\n"
    if truncate:
        os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, line.encode())


def _live_holders(fd: int) -> str:
    """The holders a lock file names whose processes still run, in words."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 1 << 16).decode(errors="replace")
    holders = []
    for line in text.splitlines():
        try:
            holder = json.loads(line)
        except json.JSONDecodeError:
            continue
        if holder.get("host") != socket.gethostname() or _alive(int(holder.get("pid", 0))):
            where = f"process {holder['pid']} on {holder['host']}, since {holder['since']}"
            holders.append(f"{holder['what']} ({where})")
    return ", ".join(holders) or "another process"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
