"""metacpo_ref: a reference implementation of Meta-CPO (arXiv 2312.10230).

Runtime dependencies are pinned to the versions tested here. safety-gymnasium
and gymnasium-robotics are installed by the Makefile with --no-deps (their own
pins, pygame 2.1.0 and numpy<1.24, do not install on Python 3.11).
"""
from setuptools import find_packages, setup

setup(
    name="metacpo_ref",
    version="0.1.0",
    description="Reference implementation of constrained meta-RL (Meta-CPO)",
    packages=find_packages(include=["metacpo_ref", "metacpo_ref.*"]),
    py_modules=["cli"],
    python_requires=">=3.11,<3.12",
    install_requires=[
        "numpy==1.26.4",
        "scipy>=1.11,<1.15",
        "autograd>=1.6",
        "click>=8.1",
        "matplotlib>=3.7",
        # safety-gymnasium's own dependencies, pinned (envs.md)
        "gymnasium==0.28.1",
        "mujoco==2.3.3",
        "pettingzoo==1.23.1",
        "Jinja2>=3.0.3",
        "xmltodict>=0.13",
        "pyyaml>=6.0",
        "imageio>=2.27",
    ],
    extras_require={
        "test": ["pytest>=7", "cvxpy==1.7.5", "diffcp==1.1.8", "clarabel"],
        "ray": ["ray==2.40.0"],
    },
)
