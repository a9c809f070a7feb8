"""Rules of the repository's layout that a fresh install depends on.

A package that is not listed in pyproject.toml works in the checkout (and in an old
editable install) but is missing from a fresh one; a test that imports the helpers
through a second module name works only where that name happens to be installed. Both
have broken a fresh-virtualenv CI run before, so they are checked here, from the files.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"


def test_the_test_helpers_have_one_import_path():
    wrong = "fusec" + ".tests"          # split, so that this file does not name it
    offenders = [p.name for p in sorted(TESTS.rglob("*.py")) if wrong in p.read_text()]
    assert not offenders, f"import the helpers as tests.harness / tests.fakedevice, not {wrong}: {offenders}"
    import tests.harness  # noqa: F401, PLC0415

    harness = (TESTS / "harness.py").resolve()
    names = [n for n, m in list(sys.modules.items())
             if getattr(m, "__file__", None) and Path(m.__file__).resolve() == harness]
    assert names == ["tests.harness"], names


def test_every_package_is_listed_in_pyproject():
    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: (ROOT / path).resolve() for name, path in conf["package-dir"].items()}
    listed = set(conf["packages"])
    found = set()
    for top, where in dirs.items():
        for init in where.rglob("__init__.py"):
            rel = init.parent.relative_to(where).parts
            name = ".".join((top, *rel))
            mapped = next((n for n, d in dirs.items() if d == init.parent.resolve()), None)
            found.add(mapped or name)
    missing = sorted(found - listed)
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {missing}"
