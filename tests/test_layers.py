"""The layers of docs/ARCHITECTURE.md hold: `lint-imports` checks pyproject.toml's contracts.

The core imports neither Hydra nor MLflow; the run neither; the Hydra side no MLflow and the
tracking side no Hydra; each layer imports only those below it; no package's modules import
each other in a cycle. The second test shows the check has teeth: a copy of `src/` with one
forbidden import must fail it, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")


def lint_imports(src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run(
        [LINT_IMPORTS, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_the_import_contracts_hold() -> None:
    """Fails when a module imports across the layers, or Hydra/MLflow where they do not belong."""
    done = lint_imports(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("core/errors.py", "import mlflow", "the core and the run import neither"),
        ("run/naming.py", "import hydra", "the core and the run import neither"),
        ("core/loop.py", "import looplab.run.execute", "layers: cli above"),
        ("launch/jobs.py", "import looplab.tracking.reader", "layers: cli above"),
        ("launch/overrides.py", "import looplab.launch.sweep", "no import cycles"),
    ],
)
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, line, broken) -> None:
    """The contracts are not vacuous: each of these imports, added to a copy, is caught."""
    shutil.copytree(ROOT / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "src" / "looplab" / module
    path.write_text(path.read_text() + f"\n{line}  # the fault\n")
    done = lint_imports(tmp_path / "src")
    assert done.returncode != 0
    verdicts = [text for text in done.stdout.splitlines() if text.startswith(broken)]
    assert verdicts and verdicts[0].endswith("BROKEN"), done.stdout


def test_looplab_train_starts_its_writer_before_it_imports_torch() -> None:
    """Fault: a module `looplab-train` imports at start-up imports torch (as run.prepare does),
    so the MLflow writer's start no longer overlaps torch's import: seconds a run and 7 s
    of a 16-job sweep's start on this machine, seen only in `make bench`."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, looplab.cli.train; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "False"
