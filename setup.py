"""Package discovery with the folder mapping of the project layout.

``OrthoDiffusionLib/`` is the library, ``training/`` installs as ``OrthoDiffusionLib.training`` and ``Resources/`` as
``OrthoDiffusionLib.resources``, so the repository keeps the Slicer extension layout while the installed package adds a
single top-level name. All other metadata is in pyproject.toml.
"""
from setuptools import find_packages, setup

MAPPING = {
    "OrthoDiffusionLib": "OrthoDiffusionLib",
    "OrthoDiffusionLib.training": "training",
    "OrthoDiffusionLib.resources": "Resources",
}

packages = []
package_dir = {}
for name, folder in MAPPING.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(folder):
        if name == "OrthoDiffusionLib" and sub.split(".")[0] in ("training", "resources"):
            continue
        packages.append(f"{name}.{sub}")
        package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
