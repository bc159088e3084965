"""The flat observation of a built Safety-Gymnasium world, read without the stock overhead.

Stock ``task.obs()`` builds a dict (one ``get_sensor`` call and array copy per
sensor, one Python lidar loop per object type), checks it against the
observation space (gymnasium ``Box.contains`` on every part) and flattens it.
:class:`ObservationPlan` is made once per built world (ids and addresses
change when a reset rebuilds the model) and then fills the flat vector
directly: one NumPy gather from ``sensordata`` for all plain sensors, the
angle sensors converted as in stock, and each lidar from one read of its
objects' positions (:mod:`metacpo_ref.envs.lidar`).

Skipped checks: the shape and dtype checks cannot fail (the plan makes the
parts with the space's shapes), lidar readings lie in [0, 1] by
construction, and sensor bounds are infinite; what is left, a NaN from the
physics, still raises ``AssertionError`` like stock.
"""
import math

import mujoco
import numpy as np

from metacpo_ref.envs.lidar import pseudo_lidar


def _slots(space):
    """``(key, slice)`` of each part of a flattened gymnasium Dict space, in flatten order."""
    offset = 0
    for key, box in space.spaces.items():
        size = int(np.prod(box.shape))
        yield key, slice(offset, offset + size)
        offset += size


def _sensor_span(model, name):
    """``(address, dim)`` of a named sensor in ``data.sensordata``."""
    s = model.sensor(name)
    return int(model.sensor_adr[s.id]), int(model.sensor_dim[s.id])


def lidar_body_ids(model, obstacle):
    """Body ids of the objects an obstacle's lidar sees (as its stock ``pos`` property).

    The circle sits at the world origin, the position of the world body (id 0).
    """
    kind = type(obstacle).__name__
    if kind == "Circle":
        return [0]
    if kind == "Goal":
        return [model.body("goal").id]
    if kind in ("Hazards", "Buttons"):
        return [model.body(f"{obstacle.name[:-1]}{i}").id for i in range(obstacle.num)]
    raise NotImplementedError(f"lean observation: no lidar for {kind} objects")


class ObservationPlan:
    """Where each part of the flat observation comes from, for one built world.

    Parts follow the order of ``task.obs_info.obs_space_dict`` (the order
    stock ``flatten`` uses): agent sensors, then one lidar per observed
    object type.
    """

    def __init__(self, task):
        if task.observe_vision or not task.observation_flatten:
            raise NotImplementedError("lean observation: flat, non-vision observations only")
        if task.lidar_conf.type != "pseudo":
            raise NotImplementedError("lean observation: pseudo lidar only")
        self.task = task
        model = task.model
        obstacles = {ob.name: ob for ob in task._obstacles}
        info = task.agent.sensor_info
        angles = task.agent.sensor_conf.sensors_angle_components
        src, dst, lidars = [], [], []
        self.sin_cos, self.quats, self.blank_buttons = [], [], None
        for key, at in _slots(task.obs_info.obs_space_dict):
            if key.endswith("_lidar") and key[:-6] in obstacles:
                lidars.append((at, obstacles[key[:-6]]))
                if key == "buttons_lidar" and type(task).__name__.startswith("ButtonLevel"):
                    self.blank_buttons = at      # ButtonLevel0.obs zeroes it while the timer runs
            elif angles and key in info.hinge_pos_names:
                self.sin_cos.append((at, _sensor_span(model, key)[0]))
            elif angles and key in info.ballquat_names:
                self.quats.append((at, _sensor_span(model, key)[0]))
            else:
                adr, dim = _sensor_span(model, key)
                if key == info.freejoint_pos_name:
                    adr, dim = adr + 2, dim - 2          # stock keeps the height only
                if dim != at.stop - at.start:
                    raise NotImplementedError(f"lean observation: unexpected size of {key!r}")
                src += range(adr, adr + dim)
                dst += range(at.start, at.stop)
        self.size = at.stop
        self.src, self.dst = np.array(src, dtype=np.intp), np.array(dst, dtype=np.intp)
        self.lidars = [(at, np.array(lidar_body_ids(model, ob), dtype=np.intp), at == self.blank_buttons)
                       for at, ob in lidars]
        conf = task.lidar_conf
        self.lidar_conf = (conf.num_bins, conf.max_dist, conf.exp_gain, conf.alias)
        # views into the MuJoCo data: they follow the simulation, no lookups per step
        self.sensordata, self.xpos = task.data.sensordata, task.data.xpos

    def __call__(self, agent_pos, agent_mat):
        """The flat observation after ``mj_forward``; ``agent_pos`` ``(x, y, z)`` and
        ``agent_mat`` (9 entries, row-major) as floats."""
        out = np.empty(self.size)
        sd = self.sensordata
        out[self.dst] = sd[self.src]
        for at, adr in self.sin_cos:
            theta = float(sd[adr])
            out[at] = np.sin(theta), np.cos(theta)
        for at, adr in self.quats:
            mujoco.mju_quat2Mat(out[at], sd[adr:adr + 4])
        for at, ids, blank in self.lidars:
            if blank and self.task.buttons.timer != 0:
                out[at] = 0.0
            else:
                out[at] = pseudo_lidar(self.xpos[ids, :2].tolist(), agent_pos, agent_mat, *self.lidar_conf)
        if math.isnan(out @ out):       # NaN somewhere (a sum of squares has no inf - inf)
            raise AssertionError(f"Bad obs {out}")
        return out
