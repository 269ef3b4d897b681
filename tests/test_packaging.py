"""The set-up promises: pins in step, the two README commands, CI calls make test."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [
        s for extra in project["optional-dependencies"].values() for s in extra
    ]
    return dict(spec.split("==") for spec in specs)


def test_every_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + [
        s for extra in project["optional-dependencies"].values() for s in extra
    ]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", spec), spec


def test_environment_yml_mirrors_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    conda_pins = dict(spec.split("==") for spec in pip if "==" in spec)
    assert conda_pins == pyproject_pins()
    assert pip[0] == "torch==2.13.0"  # torch first, as the Makefile installs it


def test_makefile_installs_torch_before_everything_else():
    makefile = (ROOT / "Makefile").read_text()
    torch_at = makefile.index("pip install --quiet torch==2.13.0")
    assert torch_at < makefile.index('pip install --quiet -e ".[dev')


def test_readme_opens_with_the_two_commands_and_ci_runs_the_suite():
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make quickstart" in head and "make test" in head
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_default_config_file_is_the_built_in_default():
    from rl_lib.experiment import ExperimentConfig, load_experiment

    assert load_experiment(ROOT / "configs" / "default.yaml") == ExperimentConfig()
