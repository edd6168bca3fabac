"""The project's files agree with one another."""

import re
import tomllib
from pathlib import Path

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
