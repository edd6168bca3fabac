"""The task registry: what binary and subtype change, named in one place."""

import keras
import numpy as np
import pandas as pd
import pytest

from bcnb import config
from bcnb.data import tasks
from bcnb.model import transfer


def test_the_registry_holds_the_tasks_config_allows():
    assert tuple(tasks.TASKS) == config.TASKS
    assert all(tasks.task_named(name).name == name for name in config.TASKS)
    assert tasks.task_named("binary") is tasks.BINARY and tasks.task_named("subtype") is tasks.SUBTYPE


def test_an_unknown_task_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match=r"^task: expected one of binary, subtype, got 'multiclass'$"):
        tasks.task_named("multiclass")
    with pytest.raises(ValueError, match="^task: "):
        transfer.build_model(32, None, task="Binary")


@pytest.mark.parametrize("name", list(tasks.TASKS))
def test_each_task_is_the_head_build_model_builds_and_its_loss_fits_it(name):
    """The Dense layer's units and activation are the task's; its loss on the model's outputs
    is the cross-entropy of the targets it makes, computed by hand."""
    task = tasks.task_named(name)
    keras.utils.set_random_seed(0)
    model = transfer.build_model(32, None, task=name)
    classifier = model.get_layer("classifier")
    assert (classifier.units, classifier.activation.__name__) == (task.units, task.activation)
    assert model.output.shape == (None, task.units)
    table = pd.DataFrame({"label": ["benign", "malignant", "malignant"], "subtype": ["A", "DC", "PC"]})
    targets = task.targets_of(table)
    outputs = model.predict(np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)), verbose=0)
    if task.units == 1:
        by_hand = -np.mean(targets * np.log(outputs[:, 0]) + (1 - targets) * np.log(1 - outputs[:, 0]))
    else:
        by_hand = -np.mean(np.log(outputs[np.arange(3), targets.astype(int)]))
    assert float(task.loss()(targets.reshape(-1, 1), outputs)) == pytest.approx(by_hand, rel=1e-5)
    assert task.accuracy().name == "accuracy"  # the name the paper's history shows


def test_targets_by_hand():
    table = pd.DataFrame(
        {"label": ["benign", "malignant", "benign", "malignant"], "subtype": ["A", "DC", "TA", "PC"]}
    )
    binary, subtype = tasks.BINARY.targets_of(table), tasks.SUBTYPE.targets_of(table)
    np.testing.assert_array_equal(binary, [0, 1, 0, 1])
    np.testing.assert_array_equal(subtype, [0, 4, 3, 7])
    assert binary.dtype == subtype.dtype == np.float32


def test_malignant_probability_by_hand():
    np.testing.assert_allclose(tasks.BINARY.malignant_probability(np.array([[0.2], [0.9]])), [0.2, 0.9])
    softmax = np.array([[0.1, 0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1, 0, 0, 0, 0]])
    np.testing.assert_allclose(tasks.SUBTYPE.malignant_probability(softmax), [0.6, 0.0])
    with pytest.raises(ValueError, match="task=binary: expected 1 outputs per image, got 8"):
        tasks.BINARY.malignant_probability(softmax)
    with pytest.raises(ValueError, match="task=subtype: expected 8 outputs per image, got 1"):
        tasks.SUBTYPE.malignant_probability(np.array([0.2, 0.9]))


def test_the_head_in_a_reports_words():
    from bcnb.report.run_report import head_of

    assert head_of({"task": "binary"}) == head_of({}) == "Dense(1, sigmoid)"  # as the paper writes it
    assert head_of({"task": "subtype"}).startswith("Dense(8, softmax) over BreakHis' tumour types")
