"""Make safety-gymnasium 1.0.0 importable on Python 3.11, without editing site-packages.

Two fixes, applied by :func:`import_safety_gymnasium` before the first import,
in every process that imports the package (workers included):

1. ``safety_gymnasium.assets.color`` holds ``np.ndarray`` values that end up as
   dataclass field defaults; Python 3.11 refuses unhashable (mutable) defaults
   ("mutable default <class 'numpy.ndarray'> for field color"). We pre-register
   a module with the same RGBA values as a hashable ``ndarray`` subclass.
2. gymnasium-robotics prints a notice about Adroit environments to stderr at
   import (through farama-notifications); that import runs with stderr
   captured, so users never see it.

It also offers :func:`fast_skybox`, a context in which worlds are built with
MuJoCo's builtin gradient skybox instead of 24 MB of PNGs, and the asset
config ``configs/assets.yaml`` that every world build reads is parsed once
and then copied (PyYAML took ~15 ms of each build). ``reset()`` goes from
~1 s to a few ms; no non-vision observation depends on the skybox.
"""
import contextlib
import copy
import io
import os
import sys
import types
import warnings

import numpy as np

# The RGBA values of safety_gymnasium/assets/color.py (version 1.0.0).
_COLOR_RGBA = {
    "push_box": [1, 1, 0, 1],
    "button": [1, 0.5, 0, 1],
    "goal": [0, 1, 0, 1],
    "vase": [0, 1, 1, 1],
    "hazard": [0, 0, 1, 0.25],
    "pillar": [0.5, 0.5, 1, 1],
    "wall": [0.5, 0.5, 0.5, 1],
    "gremlin": [0.5, 0, 1, 1],
    "circle": [0, 1, 0, 1],
    "red": [1, 0, 0, 1],
    "apple": [0.835, 0.169, 0.169, 1],
    "orange": [1, 0.6, 0, 1],
    "sigwall": [1, 1, 0, 1],
}


class HashableArray(np.ndarray):
    """An ndarray that dataclasses accept as a default (identity hash)."""

    __hash__ = object.__hash__


def _install_color_module():
    name = "safety_gymnasium.assets.color"
    if name in sys.modules:
        return
    mod = types.ModuleType(name)
    mod.__doc__ = "Colour table of safety-gymnasium, as hashable arrays (metacpo_ref.envs.compat)."
    mod.COLOR = {k: np.asarray(v).view(HashableArray) for k, v in _COLOR_RGBA.items()}
    sys.modules[name] = mod


_FAST_SKYBOX = False
_GRADIENT_SKYBOX = {
    "@name": "skybox", "@type": "skybox", "@builtin": "gradient",
    "@rgb1": "0.4 0.6 0.8", "@rgb2": "0 0 0", "@width": "32", "@height": "32",
}


class _YamlShim:
    """Stands in for ``yaml`` inside ``safety_gymnasium.world``: inside
    :func:`fast_skybox` the asset config it loads names a builtin skybox, and
    each config file is parsed once (keyed by path, size and mtime) and then
    handed out as a deep copy."""

    def __init__(self, yaml):
        self._yaml = yaml
        self.FullLoader = yaml.FullLoader
        self._cache = {}

    def load(self, stream, Loader):  # noqa: N803 (yaml's own signature)
        if not _FAST_SKYBOX:
            return self._yaml.load(stream, Loader=Loader)
        key = _file_key(stream)
        if key is None:
            return _with_builtin_skybox(self._yaml.load(stream, Loader=Loader))
        if key not in self._cache:
            self._cache[key] = _with_builtin_skybox(self._yaml.load(stream, Loader=Loader))
        return copy.deepcopy(self._cache[key])

    def __getattr__(self, name):
        return getattr(self._yaml, name)


def _file_key(stream):
    """``(path, size, mtime)`` of an open file, or None for other streams."""
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    return getattr(stream, "name", None), st.st_size, st.st_mtime_ns


def _with_builtin_skybox(cfg):
    """The asset config with MuJoCo's builtin gradient as skybox texture."""
    if isinstance(cfg, dict) and "skybox" in cfg.get("textures", {}):
        cfg = copy.deepcopy(cfg)
        cfg["textures"]["skybox"] = dict(_GRADIENT_SKYBOX)
    return cfg


@contextlib.contextmanager
def fast_skybox(enabled=True):
    """Worlds built inside this context get the builtin skybox and the cached
    asset config (fast reset)."""
    global _FAST_SKYBOX
    old, _FAST_SKYBOX = _FAST_SKYBOX, bool(enabled)
    try:
        yield
    finally:
        _FAST_SKYBOX = old


def import_safety_gymnasium():
    """Import and return ``safety_gymnasium`` with both fixes applied."""
    if "safety_gymnasium.world" in sys.modules and isinstance(
            sys.modules["safety_gymnasium.world"].yaml, _YamlShim):
        return sys.modules["safety_gymnasium"]
    _install_color_module()
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.filterwarnings("ignore", module="gymnasium_robotics")
        import gymnasium  # noqa: F401  (pettingzoo must not be imported first)
        import safety_gymnasium
        import safety_gymnasium.world as world
    if not isinstance(world.yaml, _YamlShim):
        world.yaml = _YamlShim(world.yaml)
    return safety_gymnasium
