"""The three task families of the paper (Table 1), one definition each: the Safety-Gymnasium
task and robot it re-parametrises, its Table 1 ranges, and the set-up that puts a task's
parameters into the simulator. Adding a family is adding one :class:`Family` here (and its
batch size and cost limits to ``config.FAMILY_DEFAULTS``, what a run takes when not told).

The lean step (lean.py) reproduces Safety-Gymnasium's circle and button tasks
(``CircleLevel0/1``, ``ButtonLevel0``); a family on another of its tasks needs that task's
reward there first (``LeanStep`` refuses a task it does not cover).
"""
from dataclasses import dataclass
from typing import Callable

from metacpo_ref.config import FAMILY_DEFAULTS
from metacpo_ref.envs.compat import import_safety_gymnasium

# Hazards added to the car-circle and point-button tasks: Safety-Gymnasium's Hazards geom
HAZARD_SIZE = 0.2              # Safety-Gymnasium's hazard size
CAR_HAZARD_KEEPOUT = 0.3
CAR_HAZARD_EXTENT = 1.4        # hazards placed in [-1.4, 1.4]^2, around the circle
BUTTON_HAZARD_KEEPOUT = 0.18


@dataclass(frozen=True)
class Family:
    """A Safety-Gymnasium task family of Table 1.

    ``train`` and ``test`` map each task parameter to its inclusive range
    ``(low, high)``; integer parameters are listed in ``int_params``. ``set_up(task_obj,
    params, first)`` puts a task's parameters into Safety-Gymnasium's task object
    (``first``: the object is new, geoms may still be added).
    """

    name: str
    base_id: str         # Safety-Gymnasium's task this family re-parametrises
    robot: str           # Safety-Gymnasium's agent: "Point" or "Car"
    obs_dim: int
    episode_len: int
    train: dict
    test: dict
    set_up: Callable
    int_params: tuple = ()
    stock_walls_drop: tuple = ()   # parameters a task of the stock walls lacks (Config.car_walls="stock")
    act_dim: int = 2     # Safety-Gymnasium's point and car robots both have two actuators

    @property
    def episodes(self):
        """Episodes per batch when ``Config.episodes`` is not given (config.FAMILY_DEFAULTS)."""
        return FAMILY_DEFAULTS[self.name].episodes

    @property
    def cost_limit_train(self):
        """The training cost limit when ``Config.cost_limit`` is not given (config.FAMILY_DEFAULTS)."""
        return FAMILY_DEFAULTS[self.name].cost_limit_train

    @property
    def cost_limit_test(self):
        """The meta-testing cost limit when none is given (config.FAMILY_DEFAULTS)."""
        return FAMILY_DEFAULTS[self.name].cost_limit_test


def _hazards():
    return import_safety_gymnasium().assets.geoms.Hazards


def set_up_circle(task_obj, p, first):
    """The circle of radius r_c, and walls at x = +-s * r_c when the task has ``wall_factor``
    (else Safety-Gymnasium's own walls); the agent spawns near the centre."""
    task_obj.circle.radius = float(p["radius"])
    if first:   # Safety-Gymnasium's own walls, restored for a task without wall_factor
        task_obj._stock_walls = (task_obj.sigwalls.locate_factor, list(task_obj.sigwalls.locations))
    if "wall_factor" in p:
        # walls at x = +-s * r_c: locate_factor is read by the cost, locations by the
        # placement. The circle task's sigwalls keep num = 2 (as in the stock task), so
        # there are two walls and only |x| > s * r_c costs; |y| is free.
        wall = float(p["radius"]) * float(p["wall_factor"])
        assert task_obj.sigwalls.num == 2
        task_obj.sigwalls.locate_factor = wall
        task_obj.sigwalls.locations = [(wall, 0), (-wall, 0)]
    else:       # a Car-Circle-Hazard task of the stock walls (Config.car_walls="stock")
        task_obj.sigwalls.locate_factor, task_obj.sigwalls.locations = (
            task_obj._stock_walls[0], list(task_obj._stock_walls[1]))
    # spawn near the centre (else "World has starting cost!")
    task_obj.agent.placements = [(-0.2, -0.2, 0.2, 0.2)]


def set_up_circle_hazards(task_obj, p, first):
    """The circle task with ``num_hazards`` hazards around the circle."""
    set_up_circle(task_obj, p, first)
    e = CAR_HAZARD_EXTENT
    if first:
        task_obj._add_geoms(_hazards()(num=int(p["num_hazards"]), size=HAZARD_SIZE,
                                       keepout=CAR_HAZARD_KEEPOUT, placements=[(-e, -e, e, e)]))
    task_obj.hazards.num = int(p["num_hazards"])


def set_up_button(task_obj, p, first):
    """``num_buttons`` buttons (pressing a wrong one costs) and ``num_hazards`` hazards in
    the square of half-width ``extent``."""
    task_obj.buttons.num = int(p["num_buttons"])
    task_obj.buttons.is_constrained = True
    r = float(p["extent"])
    task_obj.placements_conf.extents = [-r, -r, r, r]
    if first:
        task_obj._add_geoms(_hazards()(num=int(p["num_hazards"]), size=HAZARD_SIZE, keepout=BUTTON_HAZARD_KEEPOUT))
    task_obj.hazards.num = int(p["num_hazards"])


FAMILIES = {f.name: f for f in (
    Family(
        name="point-circle",
        base_id="SafetyPointCircle1-v0",
        robot="Point",
        obs_dim=28,          # Safety-Gymnasium 1.0.0, stock circle task
        episode_len=500,     # Safety-Gymnasium 1.0.0, stock circle task
        train={"radius": (1.0, 1.5), "wall_factor": (0.65, 0.75)},   # paper Table 1
        test={"radius": (2.0, 2.5), "wall_factor": (0.55, 0.65)},    # paper Table 1
        set_up=set_up_circle,
    ),
    Family(
        name="car-circle-hazard",
        base_id="SafetyCarCircle1-v0",
        robot="Car",
        obs_dim=56,
        episode_len=500,
        # Table 1's caption: "For P-Circle and C-Circle-H, s x r_c determines the wall
        # distance, and the same s is applied for both environments": P-Circle's ranges.
        train={"radius": (0.7, 1.0), "num_hazards": (3, 7), "wall_factor": (0.65, 0.75)},   # paper Table 1
        test={"radius": (1.2, 1.5), "num_hazards": (7, 12), "wall_factor": (0.55, 0.65)},   # paper Table 1
        set_up=set_up_circle_hazards,
        int_params=("num_hazards",),
        # the first campaign kept Safety-Gymnasium's walls at |x| = 1.125: its tasks have no
        # wall_factor (Config.car_walls="stock", what its checkpoints load with)
        stock_walls_drop=("wall_factor",),
    ),
    Family(
        name="point-button",
        base_id="SafetyPointButton0-v0",   # level 0: no gremlins
        robot="Point",
        obs_dim=60,
        episode_len=1000,
        train={"num_buttons": (3, 6), "num_hazards": (3, 6), "extent": (1.75, 2.0)},  # paper Table 1
        test={"num_buttons": (6, 10), "num_hazards": (6, 10), "extent": (2.5, 3.0)},  # paper Table 1
        set_up=set_up_button,
        int_params=("num_buttons", "num_hazards"),
    ),
)}

if tuple(FAMILIES) != tuple(FAMILY_DEFAULTS):
    raise ImportError(f"families {tuple(FAMILIES)} and their defaults {tuple(FAMILY_DEFAULTS)} (config.py) differ")
