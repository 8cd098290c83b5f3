"""The installed packages are the repository's package folders: pyproject.toml lists them (it
must, to install kernels/ as dreamfusion.kernels), so a new package folder must be listed too."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed_under_its_name():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, mapped = set(tool["packages"]), tool["package-dir"]
    assert mapped == {"dreamfusion.kernels": "kernels"}
    found = {"dreamfusion.kernels"}
    for top in ("dreamfusion", "components", "pipelines"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    found |= {f"dreamfusion.kernels.{p.parent.name}" for p in (ROOT / "kernels").glob("*/__init__.py")}
    assert listed == found, f"not listed: {sorted(found - listed)}; no such folder: {sorted(listed - found)}"


def test_kernels_import_as_dreamfusion_kernels():
    import dreamfusion.kernels

    assert Path(dreamfusion.kernels.__file__).parent == ROOT / "kernels"
