"""The public API is typed: mypy checks tests/typed_usage.py, a user's code, against the package.

The usage file's negative lines carry ``# type: ignore[code]`` and mypy runs with
--warn-unused-ignores: a wrong call that stops being an error (an ``Any`` crept into a public
signature) fails this test as surely as a right call that starts being one.
"""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO


def test_the_package_ships_py_typed() -> None:
    assert (REPO / "jobmesh" / "py.typed").is_file()
    assert "py.typed" in (REPO / "setup.cfg").read_text()


def test_typed_usage_checks_with_mypy() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--warn-unused-ignores", "--follow-imports=silent", "--no-incremental",
         "--python-version", "3.11", "tests/typed_usage.py"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
