"""The package type-checks: ``python -m mypy`` with the ``[tool.mypy]`` section of pyproject.toml.

Run from the repository root, as a developer would, so that the configuration
(files, per-module overrides) is the one under test; mypy's cache goes to a
temporary directory (a cold run, about 15 s). Skipped where mypy is not
installed (it is part of the ``test`` extra) or outside a checkout.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_is_clean(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e .[test])")
    config = ROOT / "pyproject.toml"
    if not config.is_file() or not (ROOT / "gpu_deconv").is_dir():
        pytest.skip(f"not a source checkout: {ROOT}")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir", str(tmp_path / "mypy"),
         "--no-color-output"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mypy exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
