"""The caveats, written once: which a run gets, the same in every form, and nowhere else."""

import json
import re
from pathlib import Path

import pytest

from bcnb.report import caveats
from bcnb.report.caveats import DISCLAIMER, Provenance

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED_REAL = Provenance(True, "/k/models/x.h5", "imagenet", "/data/BreaKHis_v1", 16)
RANDOM_REAL = Provenance(False, "ImageNet weights unavailable (offline)", "random", "/data/BreaKHis_v1", 16)
RANDOM_SYNTHETIC = Provenance(False, "weights=none was requested", "random", "synthetic", 9)
PRETRAINED_SYNTHETIC = Provenance(True, "/k/models/x.h5", "imagenet", "synthetic", 9)
UNKNOWN = Provenance(None)

# A few words of each caveat sentence, distinctive enough that no other text holds them.
PHRASES = [
    "RANDOM weights",
    "not transfer learning",
    "cannot be compared with the paper",
    "not real tissue",
    "built-in generated images",
    "never for diagnosis",
]


def _forms(provenance):
    """Every form a caveat takes, as text."""
    return {
        "banner": caveats.banner(provenance),
        "notice": caveats.notice(provenance),
        "markdown": "\n".join(caveats.markdown_lines(provenance)),
        "bullets": "\n".join(caveats.bullets(provenance)),
        "short": "\n".join(caveats.short_lines(provenance)),
    }


def test_a_pretrained_run_on_real_data_has_no_caveat_lines():
    assert caveats.list_caveats(PRETRAINED_REAL) == []
    assert caveats.banner(PRETRAINED_REAL) == caveats.subtitle(PRETRAINED_REAL) == ""
    assert caveats.markdown_lines(PRETRAINED_REAL) == caveats.short_lines(PRETRAINED_REAL) == []
    assert caveats.bullets(PRETRAINED_REAL) == [f"- {caveats.closing(PRETRAINED_REAL)}"]
    assert caveats.notice(PRETRAINED_REAL) == f"ImageNet weights (/k/models/x.h5)\n{DISCLAIMER}"
    assert caveats.learning_rate_note(PRETRAINED_REAL, 0.001) == ""
    assert caveats.label_weights(PRETRAINED_REAL) == "ImageNet"


def test_random_weights_give_the_weights_caveat_with_its_reason():
    (caveat,) = caveats.list_caveats(RANDOM_REAL)
    assert caveat.text.startswith(
        "the base had RANDOM weights, not ImageNet weights (ImageNet weights unavail"
    )
    assert "not transfer learning" in caveat.text and "cannot be compared with the paper's" in caveat.text
    subtitle = caveats.subtitle(RANDOM_REAL)
    assert "RANDOM weights" in subtitle and "generated" not in subtitle
    assert caveats.banner(RANDOM_REAL).startswith(f"{caveats.RULE}\nWARNING: the base had RANDOM weights")
    assert "data_instructions.md" in caveats.banner(RANDOM_REAL)  # what to do, where there is room
    assert caveats.describe_weights(RANDOM_REAL) == f"WARNING: {caveat.text}"
    assert caveats.label_weights(RANDOM_REAL) == "RANDOM (not pretrained)"
    assert "learning_rate=0.001" in caveats.learning_rate_note(RANDOM_REAL, 0.001)


def test_generated_data_gives_the_data_caveat():
    (caveat,) = caveats.list_caveats(PRETRAINED_SYNTHETIC)
    assert "bcnb's built-in generated images, not real tissue" in caveat.text
    assert "generated images" in caveats.subtitle(PRETRAINED_SYNTHETIC)
    assert "RANDOM" not in caveats.subtitle(PRETRAINED_SYNTHETIC)
    # The weights are still named where a notebook prints them.
    assert caveats.notice(PRETRAINED_SYNTHETIC).startswith("ImageNet weights (/k/models/x.h5)\n")


def test_weights_and_data_not_recorded_are_caveats_too():
    texts = [caveat.text for caveat in caveats.list_caveats(UNKNOWN)]
    assert texts == [
        "no weights.json beside the model: whether its base was pretrained is unknown",
        "no config.yaml beside the model: what it was trained on is unknown",
    ]


@pytest.mark.parametrize("provenance", [RANDOM_REAL, RANDOM_SYNTHETIC, PRETRAINED_SYNTHETIC, UNKNOWN])
def test_every_form_carries_the_same_caveats(provenance):
    found = caveats.list_caveats(provenance)
    assert found
    for name, text in _forms(provenance).items():
        for caveat in found:
            sentence = caveat.text[0].upper() + caveat.text[1:] if name == "bullets" else caveat.text
            assert sentence in text, (name, caveat.text)
    subtitle = caveats.subtitle(provenance)
    assert "\n" not in subtitle and all(caveat.tag in subtitle for caveat in found)
    assert len(caveats.markdown_lines(provenance)) == len(caveats.short_lines(provenance)) == len(found)
    assert all(
        line.startswith("**WARNING: ") and line.endswith(".**") for line in caveats.markdown_lines(provenance)
    )


def test_the_disclaimer_closes_the_limits_with_the_runs_own_test_size():
    assert caveats.closing(RANDOM_SYNTHETIC) == (
        f"{DISCLAIMER} A test accuracy on 9 test patients says nothing about use in a clinic."
    )
    assert caveats.closing(Provenance(True, dataset="/d")) == DISCLAIMER
    assert DISCLAIMER in caveats.notice(RANDOM_SYNTHETIC)


def test_provenance_is_read_from_a_runs_records_and_a_summary():
    config = {"dataset": "synthetic"}
    metrics = {
        "weights_pretrained": False,
        "weights_source": "why",
        "weights": "random",
        "n_test_patients": 9,
    }
    assert Provenance.from_records(config, metrics) == Provenance(False, "why", "random", "synthetic", 9)
    summary = {"weights_pretrained": True, "dataset": "/d", "weights": ["imagenet"]}
    assert Provenance.from_summary(summary) == Provenance(True, dataset="/d")


def _notebook_text(path):
    return "\n".join("".join(cell["source"]) for cell in json.loads(path.read_text())["cells"])


def test_no_other_module_or_notebook_writes_the_caveat_sentences():
    """Each caveat is written in caveats.py alone; every other text asks it for the words."""
    sources = {path: path.read_text() for path in (ROOT / "bcnb").rglob("*.py")}
    sources |= {path: _notebook_text(path) for path in (ROOT / "notebooks").glob("*.ipynb")}
    pattern = re.compile("|".join(re.escape(phrase) for phrase in PHRASES))
    found = {
        f"{path.relative_to(ROOT)}: {match.group()}"
        for path, text in sources.items()
        if path.name != "caveats.py"
        for match in pattern.finditer(text)
    }
    assert not found
    caveat_source = (ROOT / "bcnb" / "report" / "caveats.py").read_text()
    assert all(phrase in caveat_source for phrase in PHRASES if phrase != "cannot be compared with the paper")


def test_caveats_imports_nothing_heavy():
    """bcnb predict says its caveats before Keras starts; the reports import no TensorFlow."""
    import subprocess
    import sys

    program = (
        "import sys; import bcnb.report.caveats; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'pandas', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
