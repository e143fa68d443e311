"""Everything is in setup.cfg but one mapping: `configs/` sits at the top of the checkout (the design card's tree)
and ships inside the package as `distil/configs/`, where `distil.config` finds it installed; one copy of each file."""

from setuptools import find_namespace_packages, setup

setup(
    packages=find_namespace_packages(include=["distil", "distil.*"], exclude=["*.__pycache__"]) + ["distil.configs"],
    package_dir={"distil.configs": "configs"},
)
