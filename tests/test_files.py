"""Writing files: atomic, and readable as a plain open() would make them."""

import os

import numpy as np
import pytest

from bcnb.run import files


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


def test_written_files_follow_the_umask_not_mkstemp_s_private_mode(tmp_path, umask):
    """mkstemp makes 0600 files: a run written through it was unreadable by classmates."""
    written = [
        files.write_text_atomic(tmp_path / "a.txt", "x"),
        files.write_json_atomic(tmp_path / "b.json", {"x": 1}),
        files.replace_from_writer(tmp_path / "c.npy", lambda path: np.save(path, np.zeros(3))),
    ]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    folder = files.make_temporary_folder(".x-", tmp_path)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = files.write_text_atomic(tmp_path / "a.txt", "old")

    def fails(temporary):
        temporary.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        files.replace_from_writer(path, fails)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
