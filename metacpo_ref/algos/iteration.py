"""One training iteration's frame, shared by Meta-CPO (:mod:`metacpo_ref.algos.meta`) and
the CPO / TRPO baselines (:mod:`metacpo_ref.algos.baselines`).

Every algorithm's iteration (Algorithm 1, lines 3-14) has the same frame:
sample ``config.tasks`` training tasks, run each task's inner loop in parallel
(:func:`inner_loop`: K local updates for the meta algorithms, none for the
baselines), learn from the results (the algorithm's own step: Meta-CPO's outer
step of eq. 12, or the baselines' update on the pooled batches), refit the
value functions on the pre-adaptation batches, and write one metrics row.
:func:`run_iteration` is that frame; each algorithm passes only its own step.
"""
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from metacpo_ref.model.advantages import fit_value
from metacpo_ref.envs import train_tasks
from metacpo_ref.envs.rollouts import batch_seed, task_seed
from metacpo_ref.algos.local_step import policy_update
from metacpo_ref.algos.step_data import StepData, batch_cost, collect_step_data, specs


@dataclass(frozen=True, eq=False)
class Trace:
    """A task's K local batches and its evaluation batch (the batch of ``phi_K``)."""

    steps: tuple
    eval: StepData


@dataclass(frozen=True, eq=False)
class TaskJob:
    """One task's work in an iteration: the task, its index in the iteration, the
    parameters ``theta`` and value functions ``vf = (vf_r, vf_c)`` it starts from,
    the run's config, the iteration, and the number of local updates. ``task_part``,
    if given, is a function ``(theta, trace, config) -> part`` computed at the end of the
    inner loop, where the task's data already is (Meta-CPO's per-task meta-gradient,
    :func:`metacpo_ref.algos.meta.task_gradient`); it must be a module-level function (pickled)."""

    task: object
    index: int
    theta: np.ndarray
    vf: tuple
    config: object
    iteration: int
    local_steps: int
    task_part: object = None


@dataclass(frozen=True, eq=False)
class TaskRun:
    """One task's inner loop: its trace, per-batch returns, costs (in the run's cost
    measure; ``costs_episode`` undiscounted per episode) and steps (K + 1
    batches: k = 0..K-1 local, then evaluation), each local step's case, multipliers
    ``lam``, ``nu`` (eq. 9) and line-search fraction, the pre-adaptation batch
    ``batch0`` and its value targets, timings, and ``part``, the value of
    :attr:`TaskJob.task_part` (None without one)."""

    trace: Trace
    returns: list
    costs: list
    steps: list
    cases: list
    betas: list
    lams: list
    nus: list
    batch0: object
    targets0: tuple
    env_time: float
    learner_time: float
    part: object = None
    costs_episode: list = ()

    @property
    def obs0(self):
        return self.batch0.obs


def inner_loop(env, job):
    """Algorithm 1, lines 6-10 for one task: ``job.local_steps`` local updates of
    eq. 9 by the algorithm's own rule (:func:`metacpo_ref.algos.local_step.policy_update`),
    each on a fresh batch collected with ``phi_k``, then the evaluation batch of
    ``phi_K``. With K = 0 (the baselines) it is the one batch of ``theta``. Value
    functions start from ``job.vf`` and are refitted on each batch in turn."""
    config = job.config
    spec, vspec = specs(config)
    env.set_task(job.task)
    phi, vf, steps = np.asarray(job.theta, dtype=np.float64), job.vf, []
    out = {"returns": [], "costs": [], "costs_episode": [], "steps": [], "cases": [], "betas": [], "lams": [],
           "nus": []}
    env_time = learner_time = 0.0
    for k in range(job.local_steps + 1):
        c = collect_step_data(env, spec, vspec, phi, vf, config,
                              batch_seed(config.seed, job.iteration, job.index, k), config.train_cost_limit)
        vf = c.vf
        if k == 0:
            batch0, targets0 = c.batch, (c.adv.targets_r, c.adv.targets_c)
        out["returns"].append(float(np.mean(c.batch.ep_return)))
        out["costs"].append(batch_cost(c.batch, config))
        out["costs_episode"].append(float(np.mean(c.batch.ep_cost)))
        out["steps"].append(len(c.batch))
        t0 = time.perf_counter()
        if k < job.local_steps:
            upd = policy_update(spec, phi, c.data, config)
            steps.append(dataclasses.replace(c.data, beta=upd.beta, b_shift=upd.b_shift, solved=upd.solved))
            for key, v in (("cases", upd.case), ("betas", upd.beta), ("lams", upd.lam), ("nus", upd.nu)):
                out[key].append(v)
            phi = upd.phi
        env_time += c.env_time
        learner_time += c.learner_time + time.perf_counter() - t0
    trace, part, t0 = Trace(tuple(steps), c.data), None, time.perf_counter()
    if job.task_part is not None:
        part = job.task_part(job.theta, trace, config)
    learner_time += time.perf_counter() - t0
    return TaskRun(trace, batch0=batch0, targets0=targets0, env_time=env_time,
                   learner_time=learner_time, part=part, **out)


def refit_values(vspec, vf, runs, config):
    """Value functions of ``theta``: one fit on all pre-adaptation batches, warm-started."""
    obs = np.concatenate([r.obs0 for r in runs])
    return tuple(fit_value(vspec, p, obs, np.concatenate([r.targets0[j] for r in runs]), config.vf_iters,
                           config.vf_ftol) for j, p in enumerate(vf))


def refit_job(env, vspec, vf, runs, config):
    """:func:`refit_values` as a job for the workers (``env`` unused): ``(vf_new, seconds)``."""
    t0 = time.perf_counter()
    return refit_values(vspec, vf, runs, config), time.perf_counter() - t0


@dataclass(frozen=True, eq=False)
class Refit:
    """What :func:`refit_values` needs of a :class:`TaskRun`: the pre-adaptation
    observations and value targets (not the whole trace, to keep the job small)."""

    obs0: np.ndarray
    targets0: tuple


def json_float(v):
    """A float for ``metrics.jsonl``: NaN (``nu`` of a recovery step) becomes ``None``."""
    v = float(v)
    return None if np.isnan(v) else v


def iteration_metrics(tasks, runs, config):
    """The frame's part of a ``metrics.jsonl`` row: pre-adaptation (k = 0) return
    and cost (``cost`` in the run's ``cost_measure``, the one ``cost_limit`` is on;
    ``cost_episode`` undiscounted per episode), env steps, per-task numbers (with each
    local step's case, ``lam``, ``nu`` and ``beta`` when there are local steps), times."""
    rows = []
    for t, r in zip(tasks, runs):
        row = {"params": t.params, "returns": r.returns, "costs": r.costs, "costs_episode": list(r.costs_episode)}
        if r.cases:
            row.update(betas=r.betas, cases=r.cases, lams=[json_float(v) for v in r.lams],
                       nus=[json_float(v) for v in r.nus])
        rows.append(row)
    return {
        "return": float(np.mean([r.returns[0] for r in runs])),
        "cost": float(np.mean([r.costs[0] for r in runs])),
        "cost_episode": float(np.mean([r.costs_episode[0] for r in runs])),
        "cost_limit": config.train_cost_limit,
        "cost_measure": config.cost_measure,
        "steps": int(sum(sum(r.steps) for r in runs)),
        "tasks": rows,
        "time_env": float(sum(r.env_time for r in runs)),
        "time_learner": float(sum(r.learner_time for r in runs)),
        "time_per_task": [float(r.env_time + r.learner_time) for r in runs],
    }


def run_iteration(theta, vf, config, iteration, workers, local_steps, learn, task_part=None):
    """One iteration (Algorithm 1, lines 3-14, for any algorithm): sample
    ``config.tasks`` training tasks, run :func:`inner_loop` with ``local_steps``
    local updates on each (in parallel on ``workers``, a
    :class:`metacpo_ref.envs.workers.Workers`), then the algorithm's own step
    ``learn(theta, runs) -> (theta_new, metrics)``, and refit the value functions
    ``vf = (vf_r, vf_c)`` on the pre-adaptation batches (the batches of ``theta``; on a
    worker, at the same time as ``learn``). ``time_learner`` sums the seconds of both;
    ``time_tasks`` is the wall time of the tasks' parallel inner loops, ``time_step``
    and ``time_refit`` the seconds of ``learn`` (here) and of the refit (on a worker).
    ``task_part`` (see :class:`TaskJob`) runs at the end of each task's inner loop.
    Returns ``(theta_new, vf_new, metrics)``; ``metrics`` is the frame's row
    (:func:`iteration_metrics`) updated with the algorithm's own."""
    _, vspec = specs(config)
    tasks = train_tasks(config.family, config.tasks, task_seed(config.seed, iteration), config.task,
                        config.car_walls)
    jobs = [(TaskJob(task, i, theta, vf, config, iteration, local_steps, task_part),)
            for i, task in enumerate(tasks)]
    t0 = time.perf_counter()
    runs = workers.map(inner_loop, jobs, [f"task {i} {task.params}" for i, task in enumerate(tasks)])
    tasks_time = time.perf_counter() - t0
    # The refit needs only the pre-adaptation batches: it runs on a worker while this
    # process takes the algorithm's own step (with one worker: here, before it).
    refit = workers.submit(refit_job, (vspec, vf, [Refit(r.obs0, r.targets0) for r in runs], config),
                           "value refit")
    t0 = time.perf_counter()
    theta_new, own = learn(theta, runs)
    learn_time = time.perf_counter() - t0
    vf, refit_time = refit()
    metrics = iteration_metrics(tasks, runs, config)
    metrics.update(own, time_learner=metrics["time_learner"] + learn_time + refit_time, time_tasks=tasks_time,
                   time_step=learn_time, time_refit=refit_time)
    return theta_new, vf, metrics
