"""The project's files agree with one another."""

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_yml_pins_the_same_packages_as_pyproject():
    project = _pyproject()["project"]
    declared = set(project["dependencies"]) | set(project["optional-dependencies"]["test"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    pinned = {line for line in pip_section if not line.startswith("-e")}
    assert pinned == declared
    assert all(re.fullmatch(r"[a-z0-9_.-]+==[0-9][0-9a-z.]*", line) for line in declared), "pin every version"


def test_environment_yml_python_matches_requires_python():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in environment["dependencies"]
    assert _pyproject()["project"]["requires-python"].startswith(">=3.11")


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and re.search(r"^make test\b", ci, re.MULTILINE)


def test_the_installed_command_runs_and_prints_every_parameter():
    """The `bcnb` console script (pyproject's [project.scripts], as pip installed it) works."""
    import shutil
    import subprocess
    import sys

    from bcnb import Config

    command = shutil.which("bcnb", path=str(Path(sys.executable).parent))
    assert command, "pip did not install the bcnb command beside this Python"
    result = subprocess.run([command, "config"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and Config(**yaml.safe_load(result.stdout)) == Config()


# The distribution that provides each module bcnb imports, where the names differ.
DISTRIBUTION_OF = {
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "yaml": "pyyaml",
    "IPython": "ipython",
    "matplotlib_inline": "matplotlib-inline",
}


def _third_party_imports() -> set[str]:
    """Every top-level module bcnb's code imports that is not bcnb's or the standard library's."""
    import ast
    import sys

    found = set()
    for path in (ROOT / "bcnb").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return {name for name in found if name != "bcnb" and name not in sys.stdlib_module_names}


def test_every_package_bcnb_imports_is_declared():
    """A package that arrives only as another's dependency can vanish with its next release."""
    project = _pyproject()["project"]
    declared = {
        re.split(r"[=<>\[]", line)[0]
        for line in project["dependencies"] + project["optional-dependencies"]["dask"]
    }
    missing = {
        name
        for name in _third_party_imports()
        if DISTRIBUTION_OF.get(name, name).replace("_", "-") not in declared
    }
    assert missing == set()


@pytest.mark.slow
def test_an_installed_wheel_runs_the_notebooks_from_any_folder(tmp_path):
    """pip install . (not editable): the notebooks travel inside the package."""
    import subprocess
    import sys

    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run(
        [*pip, "wheel", "--no-deps", "-w", str(wheels), str(ROOT)], capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("bcnb-*.whl")
    installed = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel)], capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run(
        [sys.executable, "-c", "import bcnb.batch.notebooks as n; print(n.NOTEBOOKS_DIR)"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert where.stdout.strip() == str(site / "bcnb" / "notebooks")
    sets = [
        "--set",
        "synthetic_patients=12",
        "--set",
        "synthetic_images_per_patient=1",
        "--set",
        "img_size=32",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "bcnb", "reproduce", "--out", "run", "--stop-after", "01", *sets],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / ".run.partial" / "notebooks" / "01_data.ipynb").is_file()
