"""The three task families of the paper (Table 1) on Safety-Gymnasium: their tasks, and
the env that runs them. Beside them in this folder: the families' definitions (families),
the simulator's adapters (compat, lean, lidar, observe), the rollouts of a policy
(rollouts) and the worker pool that runs them (workers).

Public API (later modules and users rely on it):

- ``FAMILY_NAMES``: ``("point-circle", "car-circle-hazard", "point-button")``.
- ``Task(family, params)``: one task, a frozen dataclass.
- ``sample_tasks(family, n, split="train", seed=0, walls="paper")``: tasks with parameters
  drawn uniformly from the Table 1 range of the split (integers inclusive); ``walls="stock"``
  drops Car-Circle-Hazard's ``wall_factor`` (Safety-Gymnasium's walls, the first campaign's).
- ``make_env(family, task=None, fast=True, lean=None)``: a :class:`SafeEnv`.

A ``SafeEnv`` has ``reset(seed) -> (obs, info)``, ``step(a) -> (obs, reward,
cost, terminated, truncated, info)``, ``observation_space``, ``action_space``
``set_task(task)``, which switches it to another task (the layout is
rebuilt at the next reset), and ``close()``; it is a context manager
(``with make_env(...) as env:``).

Speed switches, both on by default, neither changes a result:

- ``fast=True``: the fast reset, worlds built with a builtin skybox
  (``compat.fast_skybox``), ~100x faster ``reset()``;
- ``lean`` (default: the value of ``fast``): steps by
  :class:`~metacpo_ref.envs.lean.LeanStep`, the stock step's results without
  its Python overhead (same observations to ~1e-15, same rewards, costs,
  episode ends, goal resampling and builder bookkeeping; tests/test_lean_step.py).

``fast=False`` is the fully stock code; ``fast=True, lean=False`` is the fast
reset with the stock step.
"""
from dataclasses import dataclass, field

import numpy as np

from metacpo_ref.envs.compat import fast_skybox, import_safety_gymnasium
from metacpo_ref.envs.families import FAMILIES
from metacpo_ref.envs.lean import LeanStep

FAMILY_NAMES = tuple(FAMILIES)


def family_config(name):
    """The :class:`families.Family` of ``name``; a clear error for unknown names."""
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; valid names: {', '.join(FAMILY_NAMES)}")
    return FAMILIES[name]


@dataclass(frozen=True)
class Task:
    """One task of a family: ``params`` maps parameter names to values."""

    family: str
    params: dict = field(hash=False)

    def __post_init__(self):
        validate_params(self.family, self.params)


def param_names(family, walls="paper"):
    """The task parameters of ``family`` in Table 1's order; with ``walls="stock"`` without
    those a stock-walls task lacks (``Family.stock_walls_drop``: Car-Circle-Hazard's wall_factor)."""
    fam = family_config(family)
    if walls not in ("paper", "stock"):
        raise ValueError(f"walls must be 'paper' or 'stock', got {walls!r}")
    return [k for k in fam.train if walls == "paper" or k not in fam.stock_walls_drop]


def validate_params(family, params):
    """Refuse unknown or missing names and values outside train-or-test ranges (never clip).
    A Car-Circle-Hazard task without ``wall_factor`` is a task of the stock walls."""
    fam = family_config(family)
    names = set(fam.train)
    if set(params) != names and set(params) != set(param_names(family, "stock")):
        raise ValueError(f"{family} tasks take exactly the parameters {sorted(names)}, got {sorted(params)}")
    for name, value in params.items():
        if not np.isfinite(value):
            raise ValueError(f"{family}: parameter {name} must be finite, got {value}")
        if name in fam.int_params and value != int(value):
            raise ValueError(f"{family}: parameter {name} must be an integer, got {value}")
        ranges = [fam.train[name], fam.test[name]]
        if not any(lo <= value <= hi for lo, hi in ranges):
            raise ValueError(
                f"{family}: {name}={value} is outside the train range {list(fam.train[name])} "
                f"and the test range {list(fam.test[name])} of Table 1")


def sample_tasks(family, n, split="train", seed=0, walls="paper"):
    """``n`` tasks drawn uniformly from the Table 1 ranges of ``split``; same seed, same tasks.
    ``walls="stock"``: without the parameters of :func:`param_names` it drops (the draws of
    the others are then those of the runs made before Car-Circle-Hazard had walls)."""
    fam = family_config(family)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = param_names(family, walls)
    ranges = {k: v for k, v in (fam.train if split == "train" else fam.test).items() if k in names}
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0 if split == "train" else 1]))
    tasks = []
    for _ in range(n):
        params = {}
        for name, (lo, hi) in ranges.items():   # fixed order: the dict order of config
            if name in fam.int_params:
                params[name] = int(rng.integers(lo, hi + 1))
            else:
                params[name] = float(rng.uniform(lo, hi))
        tasks.append(Task(family, params))
    return tasks


def parse_task(family, text, walls="paper"):
    """A :class:`Task` from ``"KEY=VALUE[,KEY=VALUE...]"`` (the CLI's ``--task``).

    Parameters not named take the middle of their training range
    (:func:`default_task`); values are checked like every task's (train or
    test range of Table 1, integers where the family has them); a key given twice is refused."""
    fam = family_config(family)
    params = dict(default_task(family, walls).params)
    seen = set()
    for item in str(text).split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"cannot read {item.strip()!r} in {text!r}: write KEY=VALUE[,KEY=VALUE...], "
                             f"keys of {family}: {', '.join(fam.train)}")
        if key not in params:
            raise ValueError(f"{family} has no task parameter {key!r}; valid: {', '.join(params)}")
        if key in seen:
            raise ValueError(f"{family}: {key} is given twice in {text!r}; give each parameter once")
        seen.add(key)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{family}: {key}={value.strip()!r} is not a number") from None
        if not np.isfinite(number):
            raise ValueError(f"{family}: parameter {key} must be finite, got {value.strip()}")
        params[key] = int(number) if key in fam.int_params and number == int(number) else number
    return Task(family, params)


def train_tasks(family, n, seed, fixed=None, walls="paper"):
    """The ``n`` training tasks of one iteration (Algorithm 1, line 4): sampled from the
    train split with ``seed`` (``walls``: :func:`sample_tasks`), or ``n`` copies of the
    task ``fixed`` (a params dict) when a run trains on one fixed task (``Config.task``)."""
    if fixed:
        return [Task(family, dict(fixed))] * int(n)
    return sample_tasks(family, n, "train", seed=seed, walls=walls)


def default_task(family, walls="paper"):
    """The midpoint of the training ranges (integers rounded down)."""
    fam = family_config(family)
    names = param_names(family, walls)
    params = {k: (int((lo + hi) // 2) if k in fam.int_params else (lo + hi) / 2)
              for k, (lo, hi) in fam.train.items() if k in names}
    return Task(family, params)


# --- configuring a Safety-Gymnasium task object ----------------------------
def _configure(task_obj, task, first):
    """Set the knobs of ``task`` on a safety-gymnasium task object: the family's set-up
    (``Family.set_up``), the episode length, a new layout at the next reset."""
    fam = family_config(task.family)
    fam.set_up(task_obj, task.params, first)
    task_obj.num_steps = fam.episode_len
    task_obj.placements_conf.placements = None   # rebuild the layout at the next reset
    if first:
        task_obj.build_observation_space()


class SafeEnv:
    """A Safety-Gymnasium env of one task family, switchable between tasks."""

    def __init__(self, family, task=None, fast=True, lean=None):
        self.family = family_config(family).name
        self.fast = bool(fast)
        self.lean = self.fast if lean is None else bool(lean)
        self._lean_step = None     # a LeanStep of the current world, made at each reset
        task = default_task(family) if task is None else task
        self._check_family(task)
        sg = import_safety_gymnasium()
        from safety_gymnasium.builder import Builder
        fam = family_config(family)
        self._env = Builder(task_id=fam.base_id, config={"agent_name": fam.robot})
        self.task = task
        _configure(self._env.task, task, first=True)
        self._sg = sg

    def _check_family(self, task):
        if not isinstance(task, Task):
            raise TypeError(f"expected a Task, got {type(task).__name__}")
        if task.family != self.family:
            raise ValueError(f"this env is {self.family!r}; cannot take a {task.family!r} task")

    def set_task(self, task):
        """Switch to ``task``; the layout is rebuilt at the next reset."""
        self._check_family(task)
        self.task = task
        _configure(self._env.task, task, first=False)

    @property
    def observation_space(self):
        return self._env.observation_space

    @property
    def action_space(self):
        return self._env.action_space

    @property
    def unwrapped(self):
        """The safety-gymnasium Builder underneath."""
        return self._env

    def reset(self, seed=None):
        seed = None if seed is None else int(seed)
        with fast_skybox(self.fast):
            if self._env.task.world is None:
                # Stock builds the first world one mj_forward short of a rebuilt one: where the car
                # starts in contact, that moved the solver's warm start (qacc_warmstart) and the last
                # bits of the episode. Build it once here, so that every reset rebuilds (test_envs.py).
                self._env.reset(seed=seed)
            obs, info = self._env.reset(seed=seed)
        if self.lean:
            self._lean_step = LeanStep(self._env)   # ids change with every rebuilt world
        return obs, info

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if self._lean_step is not None:
            return self._lean_step(action)
        return self._env.step(action)

    def close(self):
        """Release the simulator and any viewer (as every Gymnasium env); idempotent."""
        if self._env is not None:
            self._env.close()
            self._env, self._lean_step = None, None

    @property
    def closed(self):
        return self._env is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(family, task=None, fast=True, lean=None):
    """A :class:`SafeEnv` of ``family`` set to ``task`` (default: the middle of the train ranges).

    ``fast`` and ``lean`` are the speed switches of the module docstring.
    """
    return SafeEnv(family, task, fast=fast, lean=lean)
