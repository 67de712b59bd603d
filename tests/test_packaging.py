"""The installed package is the one import name ``lsr``: the root folders index/, server/ and eval/ map to
lsr.index, lsr.server and lsr.eval, and every Python package folder is listed in pyproject.toml."""

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_installed_under_lsr():
    config = _setuptools()
    folders = {name: REPO / path for name, path in config["package-dir"].items()}
    assert set(folders) == {"lsr", "lsr.index", "lsr.server", "lsr.eval"}
    found = set()
    for root_name, root in folders.items():
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((root_name, *relative)))
    assert sorted(config["packages"]) == sorted(found)


def test_no_other_top_level_name():
    assert all(name == "lsr" or name.startswith("lsr.") for name in _setuptools()["packages"])
    assert "lsr" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["lsr"]
