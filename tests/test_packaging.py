"""The installed packages are the repository's package folders: pyproject.toml lists them, so a
new package folder must be listed too; and no top-level folder of the repository shadows a package
that is installed beside it (run from the repository root, the folder would be imported instead)."""

import importlib.metadata
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed_under_its_name():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    assert "package-dir" not in tool  # every package at its own folder
    found = set()
    for top in ("dreamfusion", "components", "pipelines"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    assert listed == found, f"not listed: {sorted(found - listed)}; no such folder: {sorted(listed - found)}"


def test_no_top_level_folder_shadows_an_installed_package():
    """transformers imports the PyPI package ``kernels``; a ``kernels/`` folder at the root made
    every model load fail with an ImportError from the wrong package."""
    ours = {"dreamfusion"}
    others = {name for name, dists in importlib.metadata.packages_distributions().items() if set(dists) - ours}
    folders = {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders and not folders & others, sorted(folders & others)
    assert "kernels" not in folders and (ROOT / "dreamfusion" / "kernels" / "__init__.py").is_file()


def test_kernels_import_as_dreamfusion_kernels():
    import dreamfusion.kernels

    assert Path(dreamfusion.kernels.__file__).parent == ROOT / "dreamfusion" / "kernels"
