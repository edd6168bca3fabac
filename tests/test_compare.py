from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcnb.evaluate import compare

pytestmark = pytest.mark.slow  # every test reads two backbones trained in turn


@pytest.fixture(scope="module")
def results(tiny_cfg, tiny_split, tmp_path_factory):
    cfg = tiny_cfg.replace(run_dir=str(tmp_path_factory.mktemp("run")), bootstrap_samples=200)
    return cfg, [compare.run_backbone(cfg, name, tiny_split) for name in ("resnet50v2", "mobilenetv2")]


def test_each_backbone_trains_in_its_own_folder(results, tiny_split):
    cfg, found = results
    widths = {"resnet50v2": 2048, "mobilenetv2": 1280}  # the pooled features of each base
    for result in found:
        folder = Path(compare.backbone_config(cfg, result["backbone"]).run_dir)
        features = np.load(folder / "features" / "all.npy", mmap_mode="r")
        assert features.shape == (len(tiny_split), widths[result["backbone"]])
        assert (folder / "history.csv").is_file() and (folder / "decision.json").is_file()
        assert len(result["test_probability"]) == (tiny_split["split"] == "test").sum()
        assert result["images_per_second"] > 0 and result["pretrained"] is False
    assert found[1]["parameters"] < found[0]["parameters"]


def test_tables_show_every_backbone_and_pairs_against_the_paper(results, tiny_split):
    cfg, found = results
    table = compare.comparison_table(found)
    assert table.index.tolist() == ["resnet50v2", "mobilenetv2"]
    assert (table["weights"] == "RANDOM").all()
    # What a choice may look at (validation) beside what is reported (test).
    for result in found:
        history = pd.read_csv(Path(compare.backbone_config(cfg, result["backbone"]).run_dir) / "history.csv")
        assert table.loc[result["backbone"], "val loss"] == pytest.approx(history["val_loss"].min(), abs=1e-4)
        assert 0 <= table.loc[result["backbone"], "val ROC AUC"] <= 1
    assert list(table.columns).index("val loss") < list(table.columns).index("test balanced_accuracy")
    paired = compare.paired_table(found, tiny_split[tiny_split["split"] == "test"], n_boot=200)
    assert paired.index.tolist() == ["mobilenetv2"]
    assert 0 <= paired.loc["mobilenetv2", "McNemar p"] <= 1


def test_paired_table_without_the_reference_is_empty(results, tiny_split):
    _, found = results
    assert compare.paired_table(found[1:], tiny_split[tiny_split["split"] == "test"]).empty


def test_a_second_run_reuses_features_and_keeps_the_measured_speed(results, tiny_split):
    cfg, found = results
    again = compare.run_backbone(cfg, "mobilenetv2", tiny_split)
    assert again["images_per_second"] == found[1]["images_per_second"]
    assert (again["test_probability"] == found[1]["test_probability"]).all()


def test_the_runs_own_backbone_is_the_runs_model_not_trained_again(results, tiny_split):
    """Once notebook 03 has trained the run's base, its row is that model: the same file, the
    same decision and figures, and no second training."""
    import shutil

    cfg, found = results
    trained = Path(compare.backbone_config(cfg, "resnet50v2").run_dir)
    for name in ("model.keras", "history.csv", "weights.json", "features"):  # as 02-03 leave them
        (shutil.copytree if name == "features" else shutil.copy2)(trained / name, Path(cfg.run_dir) / name)

    def no_training(*args, **kwargs):
        raise AssertionError("the run's own base was trained again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compare, "train_model", no_training)
        again = compare.run_backbone(cfg, "resnet50v2", tiny_split)
    assert (trained / "model.keras").samefile(Path(cfg.run_dir) / "model.keras")
    assert again["trained_by"].startswith("notebook 03") and found[0]["trained_by"] == "this notebook"
    assert again["measured"] == found[0]["measured"] and again["epochs_run"] == found[0]["epochs_run"]
    assert again["images_per_second"] == found[0]["images_per_second"]
    np.testing.assert_array_equal(again["test_probability"], found[0]["test_probability"])
