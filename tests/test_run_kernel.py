"""bcnb.batch.notebooks.RunKernel: a run's notebooks share one kernel, each starting as in its own."""

import os

import nbformat
import pytest
from conftest import running

from bcnb import Config
from bcnb.batch import notebooks


def _notebook(folder, name: str, *cells: str) -> None:
    book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(book, folder / name)


def test_a_runs_notebooks_share_one_kernel_each_starting_afresh(tmp_path):
    source, run = tmp_path / "lessons", tmp_path / "run"
    source.mkdir()
    keras_layer = (
        "from bcnb.run.seeds import seed_everything\n"
        "seed_everything(1)  # as every lesson starts\n"
        "import keras\n"
        "names.append(keras.layers.Dense(1).name)"
    )
    write = "open('seen.txt', 'a').write(f'{os.getpid()} {names}\\n')"
    # three tracings of one library function per notebook: five together would make TensorFlow
    # warn of "frequent retracing", which neither notebook does in a kernel of its own
    tracings = "import tensorflow as tf\nfor n in range(3):\n    tf.function(tf.reduce_sum)(tf.zeros([n]))"
    first_cell = "import os\nleftover = 1\nnames = []"
    _notebook(source, "a.ipynb", first_cell, keras_layer, keras_layer, tracings, write)
    _notebook(
        source,
        "b.ipynb",
        "import os\nassert 'leftover' not in globals(), 'a variable of the notebook before'\nnames = []",
        keras_layer,
        tracings,
        write,
    )
    notebooks.run_notebooks(run, ["a.ipynb", "b.ipynb"], Config(), source)
    first, second = (line.split(" ", 1) for line in (run / "notebooks" / "seen.txt").read_text().splitlines())
    assert first[0] == second[0] and int(first[0]) != os.getpid()  # one kernel, not this process
    # Keras numbers layers from the start in each notebook, as in a kernel of its own
    assert first[1] == "['dense', 'dense_1']" and second[1] == "['dense']"
    assert sorted(p.name for p in (run / "notebooks").glob("*.ipynb")) == ["a.ipynb", "b.ipynb"]
    assert notebooks.ran_to_its_end(run, "b.ipynb")  # what --resume keeps a protocol's run by
    printed = _printed(run / "notebooks" / "b.ipynb")
    assert "retracing" not in printed, printed


def _printed(notebook) -> str:
    """The text an executed notebook's cells printed."""
    return "".join(
        "".join(output.get("text", ""))
        for cell in nbformat.read(notebook, as_version=4).cells
        for output in cell.get("outputs", [])
    )


def test_the_kernel_is_shut_down_when_a_notebook_fails(tmp_path):
    source, run = tmp_path / "lessons", tmp_path / "run"
    source.mkdir()
    _notebook(
        source,
        "a.ipynb",
        "import os\nopen('pid.txt', 'w').write(str(os.getpid()))\nraise ValueError('on purpose')",
    )
    with pytest.raises(notebooks.NotebookFailed, match="ValueError: on purpose"):
        notebooks.run_notebooks(run, ["a.ipynb"], Config(), source)
    # kept under its name, to read, but not a notebook that ran to its end (nor is a missing one)
    assert (run / "notebooks" / "a.ipynb").is_file() and not notebooks.ran_to_its_end(run, "a.ipynb")
    assert not notebooks.ran_to_its_end(run, "b.ipynb")
    assert not running(int((run / "notebooks" / "pid.txt").read_text()))  # gone, or a zombie


@pytest.mark.parametrize("piped", [True, False], ids=["ipykernel-pipes-fd-2", "fd-2-direct"])
def test_runs_given_one_kernel_each_work_in_their_own_folder(tmp_path, monkeypatch, piped):
    """A protocol's runs share the kernel: each run's notebooks see its folder as a kernel
    started for it would (working folder, the folder held for it) and its C++ log goes to its
    own kernels.log, whether ipykernel reads file descriptor 2 through its pipe or not."""
    if piped:  # ipykernel leaves file descriptor 2 alone in a kernel started under pytest
        monkeypatch.delenv("PYTEST_CURRENT_TEST")
    source = tmp_path / "lessons"
    source.mkdir()
    _notebook(
        source,
        "a.ipynb",
        "import os\nfrom bcnb.run.lock import HELD_BY_PARENT",
        "open('seen.txt', 'w').write(f'{os.getpid()} {os.getcwd()} {os.environ[HELD_BY_PARENT]}')",
        "os.write(2, f'native line of {os.path.basename(os.environ[HELD_BY_PARENT])}\\n'.encode())",
    )
    runs = [tmp_path / "protocol" / name for name in ("fold-1", "fold-2")]
    with notebooks.run_kernel() as kernel:
        for run in runs:
            notebooks.run_notebooks(run, ["a.ipynb"], Config(), source, kernel=kernel)
    seen = [(run / "notebooks" / "seen.txt").read_text().split(" ") for run in runs]
    assert seen[0][0] == seen[1][0]  # one kernel for both runs
    for run, (_, cwd, held) in zip(runs, seen):
        assert (cwd, held) == (str(run / "notebooks"), str(run))
        log = (run / "notebooks" / notebooks.KERNEL_LOG).read_text()
        assert [line for line in log.splitlines() if "native line" in line] == [f"native line of {run.name}"]
        if piped:  # and the notebook shows it, as one run in a kernel of its own does
            assert f"native line of {run.name}" in _printed(run / "notebooks" / "a.ipynb")


def test_a_dask_worker_runs_its_runs_in_one_kernel_and_starts_another_if_it_died(tmp_path):
    """bcnb.batch.on_dask.run_on_worker, called as a worker calls it: the worker's second run
    goes to the kernel of its first; a kernel that died is replaced for the next run."""
    from bcnb.batch import on_dask

    source = tmp_path / "lessons"
    source.mkdir()
    _notebook(source, "a.ipynb", "import os\nopen('pid.txt', 'w').write(str(os.getpid()))")
    _notebook(source, "die.ipynb", "import os\nos._exit(1)")
    pids = []
    try:
        for run in ("run-1", "run-2", "killer", "run-3"):
            names = ["die.ipynb"] if run == "killer" else ["a.ipynb"]
            try:
                on_dask.run_on_worker(str(tmp_path / run), names, Config().to_dict(), str(source))
            except Exception:  # the kernel died under the notebook: that run fails
                assert run == "killer"
                continue
            pids.append((tmp_path / run / "notebooks" / "pid.txt").read_text())
    finally:
        while on_dask._WORKER_KERNEL:
            on_dask._WORKER_KERNEL.pop().shutdown()
    assert pids[0] == pids[1] != pids[2]  # one kernel for both runs; a new one after it died
