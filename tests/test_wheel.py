"""The built wheel installs one top-level name, ``conscience``, with every layer under it and the
package data in place, and it works from outside the repository (no checkout on ``sys.path``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


SOURCES = ["pyproject.toml", "README.md", "conscience", "engine", "server", "trainer", "evals"]
SOURCES += ["testing", "bench", "cli"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built from a copy: setuptools keeps a build/ folder in the source tree, and a stale one
    # would hand files deleted since to the next wheel.
    source = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("conscience-*.whl")
    return built


def test_the_wheel_installs_only_names_under_conscience(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"conscience"}
    for layer in ("engine", "server", "trainer", "evals", "testing", "bench", "cli"):
        assert f"conscience/{layer}/__init__.py" in names, layer
    # Package data and the engine's child script, which is run by path.
    assert "conscience/frameworks/three-laws.toml" in names
    assert "conscience/calibrations/default.json" in names
    assert "conscience/calibrations/probe.json" in names
    assert "conscience/calibrations/cascade.json" in names
    assert "conscience/evals/data/verdicts.jsonl" in names
    assert "conscience/evals/data/harm_judging_split.json" in names
    assert "conscience/engine/child.py" in names
    assert not [name for name in names if name.startswith("conscience/tests")]


def test_the_installed_wheel_runs_without_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "-t", str(target)]
    subprocess.run(
        [*install, str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import conscience, conscience.cli, conscience.server.app, conscience.engine.connect;"
        "import conscience.trainer.loss, conscience.evals.shared.labelled;"
        "from conscience.evals.shared.labelled import DEFAULT_SET;"
        "print(conscience.__file__, DEFAULT_SET.exists())"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    where, data = done.stdout.split()
    assert Path(where).is_relative_to(target) and data == "True"
    help_text = subprocess.run(
        [sys.executable, "-m", "conscience.cli", "--help"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert help_text.returncode == 0 and "serve" in help_text.stdout, help_text.stderr
