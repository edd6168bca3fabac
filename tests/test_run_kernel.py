"""bcnb.batch.notebooks.RunKernel: a run's notebooks share one kernel, each starting as in its own."""

import os
from pathlib import Path

import nbformat

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
    printed = [
        "".join(output.get("text", ""))
        for cell in nbformat.read(run / "notebooks" / "b.ipynb", as_version=4).cells
        for output in cell.get("outputs", [])
    ]
    assert not any("retracing" in text for text in printed), printed


def test_the_kernel_is_shut_down_when_a_notebook_fails(tmp_path):
    import pytest

    source, run = tmp_path / "lessons", tmp_path / "run"
    source.mkdir()
    _notebook(
        source,
        "a.ipynb",
        "import os\nopen('pid.txt', 'w').write(str(os.getpid()))\nraise ValueError('on purpose')",
    )
    with pytest.raises(notebooks.NotebookFailed, match="ValueError: on purpose"):
        notebooks.run_notebooks(run, ["a.ipynb"], Config(), source)
    kernel = Path(f"/proc/{(run / 'notebooks' / 'pid.txt').read_text()}/stat")
    assert not kernel.exists() or kernel.read_text().split(") ")[1].startswith("Z")  # gone, or a zombie
