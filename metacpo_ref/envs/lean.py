"""A lean ``Builder.step`` for the circle and button tasks: same results, less Python.

Stock ``Builder.step`` spends most of its time outside the physics (the
MuJoCo calls are 11-28% of it in our three families): observation dict
building, ``Box.contains`` checks, Python loops over lidar objects, hazards
and contacts with name lookups and string comparisons. :class:`LeanStep`
computes the same step from the same MuJoCo model and data and the stock
task objects' state:

- the physics calls are the stock ones, in the stock order: ``mj_step`` once
  per frame (the frame-skip draw still consumes the task's random stream),
  then ``mj_forward`` three times (stock calls it in ``simulation_forward``,
  ``calculate_cost`` and ``obs``; a repeated ``mj_forward`` is not a no-op
  when there are constraints, it re-solves from the new warm start), so the
  simulated trajectory is bit for bit the stock one;
- reward, costs and the goal test read positions, velocities and contacts by
  id (ids are looked up once per built world) with the stock formulas;
- the observation is filled by :class:`~metacpo_ref.envs.observe.ObservationPlan`
  (sensors in one gather, each lidar from one read of its objects' positions);
- the rare goal event calls the stock task methods (``update_layout``,
  ``update_world``: new goal button, timer, ``last_dist_goal``), and the
  builder's ``steps``, ``terminated``, ``truncated`` (hence ``done``) and
  ``cost`` are kept exactly as stock keeps them.

Checks skipped because they cannot fail for our worlds: observation-space
``contains`` (see observe.py; a NaN still raises), ``MujocoException``
handling (nothing in safety-gymnasium or mujoco raises it), human rendering
(never on). A world whose configuration is outside what this covers raises
``NotImplementedError`` when the step is built, never a silently wrong step.
"""
import math

import mujoco
import numpy as np

from metacpo_ref.envs.compat import import_safety_gymnasium
from metacpo_ref.envs.observe import ObservationPlan

SUPPORTED_TASKS = ("CircleLevel0", "CircleLevel1", "ButtonLevel0")
SUPPORTED_OBJECTS = ("Circle", "Sigwalls", "Hazards", "Buttons", "Goal")


def check_supported(builder):
    """Raise ``NotImplementedError`` unless :class:`LeanStep` reproduces ``builder.step``."""
    task = builder.task
    problems = []
    if type(task).__name__ not in SUPPORTED_TASKS:
        problems.append(f"task {type(task).__name__}")
    problems += [f"object {type(ob).__name__}" for ob in task._obstacles
                 if type(ob).__name__ not in SUPPORTED_OBJECTS]
    if task._mocaps or task.action_noise or task.debug:
        problems.append("mocaps, action noise or debug mode")
    if task.reward_conf.reward_orientation or task._is_load_static_geoms:
        problems.append("orientation reward or static geoms")
    if builder.render_parameters.mode == "human":
        problems.append("human rendering")
    if problems:
        raise NotImplementedError("lean step does not cover: " + ", ".join(problems))


class ButtonContacts:
    """The agent's contacts with buttons, by geom id (stock compares geom names)."""

    def __init__(self, model, task):
        names = [model.geom(i).name for i in range(model.ngeom)]
        agent_names = set(task.agent.body_info.geom_names)
        self.agent = {i for i, n in enumerate(names) if n in agent_names}
        self.buttons = {i for i, n in enumerate(names) if n.startswith("button")}
        self.button_id = {n: i for i, n in enumerate(names)}
        self.task = task

    def __call__(self, data):
        """``(goal_met, wrong_presses)``: whether the agent touches the goal button
        (stock ``goal_achieved``) and how many of its contacts are with other
        buttons (the count behind stock ``Buttons.cal_cost``)."""
        if data.ncon == 0:
            return False, 0
        goal = self.button_id[f"button{self.task.buttons.goal_button}"]
        met, wrong = False, 0
        contact = data.contact
        for g1, g2 in zip(contact.geom1.tolist(), contact.geom2.tolist()):
            if g1 in self.agent or g2 in self.agent:
                if g1 == goal or g2 == goal:
                    met = True
                elif g1 in self.buttons or g2 in self.buttons:
                    wrong += 1
        return met, wrong


class LeanStep:
    """``Builder.step`` of one built world (make a new one after each reset).

    Call it with an action; it returns what ``builder.step`` would:
    ``(obs, reward, cost, terminated, truncated, info)``.
    """

    def __init__(self, builder):
        check_supported(builder)
        sg = import_safety_gymnasium()
        self.ResamplingError = sg.utils.common_utils.ResamplingError
        self.builder = builder
        self.task = task = builder.task
        self.model, self.data = m, d = task.model, task.data
        self.agent_id = m.body("agent").id
        self.ctrl_lo = m.actuator_ctrlrange[:, 0].copy()
        self.ctrl_hi = m.actuator_ctrlrange[:, 1].copy()
        self.jacp = np.zeros((3, m.nv))
        self.observe = ObservationPlan(task)
        self.is_button = type(task).__name__.startswith("ButtonLevel")
        self.contacts = ButtonContacts(m, task) if self.is_button else None
        self.goal_id = m.body("goal").id if self.is_button else None
        hazards = getattr(task, "hazards", None)
        n_hazards = hazards.num if hazards is not None else 0
        self.hazard_ids = np.array([m.body(f"hazard{i}").id for i in range(n_hazards)], dtype=np.intp)
        # views into the MuJoCo data: they follow the simulation, no lookups per step
        self.xpos, self.xmat, self.qvel, self.ctrl = d.xpos, d.xmat, d.qvel, d.ctrl

    def __call__(self, action):
        b, task, m, d = self.builder, self.task, self.model, self.data
        assert not b.done, "Environment must be reset before stepping."
        action = np.array(action, copy=False)
        if action.shape != task.action_space.shape:
            raise ValueError("Action dimension mismatch")
        self._simulate(action)
        pos = self.xpos[self.agent_id].tolist()
        goal_met, wrong_presses = self.contacts(d) if self.is_button else (task.goal_achieved, 0)
        reward = self._clip(self._button_reward(pos, goal_met) if self.is_button else self._circle_reward(pos))
        mujoco.mj_forward(m, d)                      # stock: in calculate_cost
        b.cost = self._costs(pos, wrong_presses)
        info = dict(b.cost)
        cost = info["cost_sum"]
        task.specific_step()
        if goal_met:
            info["goal_met"] = True
            self._next_goal()
        if not task.agent.is_alive():
            b.terminated = True
        b.steps += 1
        if b.steps >= task.num_steps:
            b.truncated = True
        mujoco.mj_forward(m, d)                      # stock: in task.obs()
        obs = self.observe(pos, self.xmat[self.agent_id].tolist())
        return obs, reward, cost, b.terminated, b.truncated, info

    # --- physics: stock simulation_forward ----------------------------------
    def _simulate(self, action):
        """Clip the action into ``ctrl``, step the frames, then ``mj_forward``."""
        task, m, d = self.task, self.model, self.data
        np.minimum(np.maximum(action, self.ctrl_lo), self.ctrl_hi, out=self.ctrl)   # = np.clip
        conf = task.sim_conf
        for _ in range(task.random_generator.binomial(conf.frameskip_binom_n, conf.frameskip_binom_p)):
            mujoco.mj_step(m, d)
        mujoco.mj_forward(m, d)

    # --- reward: stock calculate_reward and Builder._reward -----------------
    def _circle_reward(self, pos):
        """CircleLevel0: angular speed around the origin, damped off the circle."""
        mujoco.mj_jacBody(self.model, self.data, self.jacp, None, self.agent_id)
        u, v, _ = (self.jacp @ self.qvel).tolist()          # stock agent.vel
        x, y, _ = pos
        radius = math.sqrt(x**2 + y**2)
        return ((-u * y + v * x) / radius) / (1 + abs(radius - self.task.circle.radius)) * self.task.reward_factor

    def _button_reward(self, pos, goal_met):
        """ButtonLevel0: progress towards the goal button, plus a bonus on pressing it."""
        task = self.task
        gx, gy, _ = self.xpos[self.goal_id].tolist()
        dx, dy = gx - pos[0], gy - pos[1]
        dist = math.sqrt(dx * dx + dy * dy)                 # stock agent.dist_xy(goal.pos)
        reward = (task.last_dist_goal - dist) * task.buttons.reward_distance
        task.last_dist_goal = dist
        if goal_met:
            reward += task.buttons.reward_goal
        return reward

    def _clip(self, reward):
        """Builder._reward: clip (with stock's warning) outside +-reward_clip."""
        clip = self.task.reward_conf.reward_clip
        if clip and not -clip < reward < clip:
            reward = float(np.clip(reward, -clip, clip))
            print("Warning: reward was outside of range!")
        return reward

    # --- costs: stock calculate_cost, cal_cost of each object, Builder._cost ---
    def _costs(self, pos, wrong_presses):
        """The stock cost dict: one raw term per constrained object, their sum, then 0/1 indicators."""
        cost = {}
        for ob in self.task._obstacles:
            if not ob.is_constrained:
                continue
            kind = type(ob).__name__
            if kind == "Sigwalls":
                out = abs(pos[0]) > ob.locate_factor
                if ob.num == 4:
                    out = out or abs(pos[1]) > ob.locate_factor
                cost["cost_out_of_boundary"] = out
            elif kind == "Hazards":
                cost["cost_hazards"] = self._hazard_cost(ob, pos)
            elif kind == "Buttons" and ob.timer == 0:
                cost["cost_buttons"] = wrong_presses * ob.cost
        cost["cost_sum"] = sum(v for k, v in cost.items() if k.startswith("cost_"))
        if self.task.cost_conf.constrain_indicator:
            cost = {k: float(v > 0.0) for k, v in cost.items()}
        return cost

    def _hazard_cost(self, hazards, pos):
        """Hazards.cal_cost: the depth ``size - dist`` summed over the hazards the agent is in."""
        ax, ay = pos[0], pos[1]
        total = 0
        for hx, hy in self.xpos[self.hazard_ids, :2].tolist():
            dist = math.sqrt((hx - ax) * (hx - ax) + (hy - ay) * (hy - ay))   # stock agent.dist_xy
            if dist <= hazards.size:
                total += hazards.cost * (hazards.size - dist)
        return total

    # --- goal event: Builder.step's goal processing, with the stock task methods ---
    def _next_goal(self):
        """Move to a new goal as stock does, or end the episode."""
        task, b = self.task, self.builder
        if not task.mechanism_conf.continue_goal:
            b.terminated = True
            return
        task.update_layout()
        if not task.mechanism_conf.terminate_resample_failure:
            task.update_world()
            return
        try:
            task.update_world()
        except self.ResamplingError:
            b.terminated = True
