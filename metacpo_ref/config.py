"""Every default of metacpo_ref, in one place, each with its source.

Sources: "paper" is Meta-CPO (arXiv 2312.10230, Table 1, Section 5, Fig. 5);
"authors' code" is the paper's public repository (its settings as we read
them); "derivations" is docs/derivations.md in this repository (the CPO step,
its line search and its derivative, the cost measures, with numbered equations D1-D44);
"measured" means chosen here from a measurement, described in docs/settings.md
(one section per setting: its source and the measurements).
Cost limits are on the run's cost measure (``Config.cost_measure``): the paper's
discounted ``J_C`` (the default) or the undiscounted sum of costs over one episode.
"""
import math
from dataclasses import dataclass, field, fields

import numpy as np

# --- policy and estimates -------------------------------------------------
HIDDEN = (32, 16)        # paper, Section 5 (the authors' code uses (24, 12))
GAMMA = 0.99             # authors' code
GAE_LAMBDA = 0.95        # authors' code
VF_ITERS = 25            # authors' code: L-BFGS iterations per value fit
VF_HIDDEN = (32, 16)     # same MLP code as the policy
INIT_LOG_STD = -0.5      # common TRPO/CPO choice (Spinning Up, safety-starter-agents)
# Observation normalisation (the authors' code normalises observations): fitted
# once per run on random-policy episodes of the training tasks, then frozen.
# The accelerometer reads ~9 m/s^2 with std up to ~9; lidar bins lie in [0, 1].
OBS_NORM_EPISODES = 1    # random-policy episodes per sampled task for the fit
OBS_STD_FLOOR = 1.0      # measured: never magnify a feature (gravity's std is 0)

# --- the CPO step (eq. 9) and its line search (Algorithm 1 lines 9, 14) -----
INNER_DELTA = 0.01       # authors' code: Euclidean trust radius of local steps; with
                         # inner_metric="fisher" the same 0.01 is a KL radius, equal to
                         # BASELINE_DELTA (safety-starter-agents' CPO/TRPO target KL)
BASELINE_DELTA = 0.01    # safety-starter-agents' CPO/TRPO target KL: the KL trust radius of the
                         # baselines' Fisher-metric steps (0.5 x'Hx <= delta, H the Fisher matrix)
LINE_SEARCH_KL = 0.01    # safety-starter-agents' target KL again, as the mean-KL bound every line
                         # search enforces with the Euclidean metric (paper, Section 4: "updates may
                         # violate ... KL-divergence, requiring a backtracking line search"); derivations D19
OUTER_DELTA = 0.01       # authors' code: radius of the meta step (eq. 12)
CG_ITERS = 10            # derivations, section 7 (10-15 iterations)
CG_DAMPING = 0.1         # derivations, section 7
FISHER_SUBSAMPLE = 1     # every observation. OpenAI Baselines' TRPO makes its Fisher-vector products on every
                         # 5th (trpo_mpi: fvpargs = [arr[::5] for arr in args]), ~5x cheaper; not the default
                         # until measured for learning (docs/performance.md)
BASELINE_CG_TOL = 1e-10  # the CPO / TRPO baselines' CG stops at this relative residual ||r|| / ||v||:
                         # the residual_tol default of rllab's and OpenAI baselines' cg (a bound on r'r
                         # there); with CG_ITERS iterations it is the iteration count that stops it
LINE_SEARCH_DECAY = 0.8  # derivations, section 7 (D18, D19)
LINE_SEARCH_STEPS = 15   # derivations, section 7 (D18)

# --- the Fisher-metric local step (inner_metric="fisher", beyond the paper) -----
# Its chain is differentiated exactly, so the H^{-1} products are exact to the gradient
# check's tolerance, not CG's usual 10 iterations (measured: docs/settings.md).
FISHER_DIRECT_MAX = 300    # n <= this: dense H from n Fisher-vector products, Cholesky (exact)
FISHER_CG_TOL = 1e-10      # else CG to this relative residual (measured: 61-95 iterations)
FISHER_CG_MAX_ITERS = 250  # CG's cap (a warning says when the tolerance was not reached)
REPLAY_WARM_START = False  # the meta-gradient's replay of a local step starts its CG solves from the step
                           # taken's solutions (1 product instead of ~30 when they already meet the tolerance):
                           # the same tolerance, other floats (~1e-10); not the default until measured for
                           # learning (issue 34; docs/performance.md)

# --- meta-training (Algorithm 1) --------------------------------------------
META_ITERATIONS = 50     # the first campaign's: 4.5M env steps per run; 100 gave the same verdicts
                         # (measured: docs/settings.md, docs/results.md)
META_TASKS = 5           # paper: 5 tasks per meta-iteration
LOCAL_STEPS = 5          # paper: 5 local updates
SEEDS = 3                # paper: 3 random seeds


# --- what a run of each task family takes when not told --------------------------
# The families themselves (Table 1's ranges, the simulator's set-up): envs/families.py.
@dataclass(frozen=True)
class FamilyDefaults:
    """A family's batch size (``Config.episodes`` not given) and cost limits (``Config.cost_limit``
    not given, and meta-testing's limit)."""

    episodes: int
    cost_limit_train: float
    cost_limit_test: float


FAMILY_DEFAULTS = {   # episodes: about 3000 steps per batch (authors' code); limits: docs/settings.md
    "point-circle": FamilyDefaults(episodes=6, cost_limit_train=10.0, cost_limit_test=10.0),   # authors' code
    "car-circle-hazard": FamilyDefaults(episodes=6, cost_limit_train=10.0, cost_limit_test=5.0),   # paper, Fig. 5b
    "point-button": FamilyDefaults(episodes=3, cost_limit_train=10.0, cost_limit_test=10.0),   # authors' code
}


# --- constraint handling: how the measured cost is fed to eq. 9 ------------------
# Above the limit (b_hat > 0), eq. 4's recovery step; at or below it, eq. 9 as it is
# (derivations D34). Measured: aiming exactly at the limit settled 26-39% above it (docs/settings.md).
RECOVER_ABOVE_LIMIT = True

ALGOS = ("meta-cpo", "meta-trpo", "cpo", "trpo")

# --- the cost measure: what the limit is on (docs/derivations.md, section 12) ------
# discounted: the paper's J_C(pi) = E[sum_t gamma^t C(s_t, a_t)] <= h (Section 2) from each
# episode's first step; episode: the undiscounted cost per episode (Safety-Gymnasium's convention).
COST_MEASURES = ("discounted", "episode")
COST_MEASURE = "discounted"   # paper, Section 2
CAR_WALLS = ("paper", "stock")
OUTER_METRICS = ("identity", "fisher")
INNER_METRICS = ("identity", "fisher")

# --- the metrics of the meta algorithms' steps -----------------------------------
# (inner, outer): the metric of the local steps (eq. 9) and of the meta step (eq. 12).
PAPER_METRICS = ("identity", "identity")   # paper: Euclidean trust regions (Limitations section)
PAPER = dict(zip(("inner_metric", "outer_metric"), PAPER_METRICS))   # Config(**PAPER, ...): the paper's steps
META_CPO_METRICS = ("fisher", "fisher")    # measured: lower meta-test cost and higher return than the
                                           # paper's pair in all 4 runs compared (docs/settings.md)
# Meta-CPO's two variants, named on figures and tables and run by the campaign as meta-cpo-paper
# and meta-cpo: Algorithm 1 as the paper writes it (Euclidean local and meta steps, eq. 9's exact
# step whenever feasible) and ours (Config()'s defaults: META_CPO_METRICS, the recover rule D34).
PAPER_META_CPO = {**PAPER, "recover_above_limit": False}
OUR_META_CPO = {**dict(zip(("inner_metric", "outer_metric"), META_CPO_METRICS)), "recover_above_limit": RECOVER_ABOVE_LIMIT}

# What `make train` runs (Config()'s defaults: Meta-CPO with META_CPO_METRICS and the recover
# rule, point-button, the limit 10 on the paper's J_C) and why, measured by the second campaign
# (docs/results.md, "The paper's Meta-CPO and ours"; 3 seeds per variant and family, 4.5M steps,
# Welch's test over per-seed means at k = 5 of the meta-test). Against the paper's Meta-CPO
# (PAPER_METRICS, exact eq. 9 step) ours earns more return on point-button (+3.9, p = 0.047) and
# point-circle (+1.6, p = 0.087) at the same J_C (p = 0.92, 0.7), and on car-circle-hazard, the
# one family whose limit binds, less return (-3.5, p = 0.015) at less cost (J_C -3.6, p = 0.27;
# per episode -64, p = 0.05), staying where the paper's adapts away from the limit (7.6 -> 14.5).
# Nowhere significantly costlier: ours stays the default. The family stays point-button (the
# practitioners' command), although under J_C its limit does not bind for any algorithm there
# (README); neither Meta-CPO is significantly safer than CPO on any family.


def default_metrics(algo):
    """``(inner_metric, outer_metric)`` of ``algo`` when not given: Meta-CPO's measured
    choice (``META_CPO_METRICS``); the paper's for Meta-TRPO (the first campaign runs it as
    the paper does) and for the baselines (which use neither: their step is Fisher, KL radius
    ``baseline_delta``)."""
    return META_CPO_METRICS if algo == "meta-cpo" else PAPER_METRICS


META_TEST_TASKS = 5      # paper, Fig. 5 third row: meta-testing on unseen tasks (5 here, as in docs/results.md)


@dataclass(frozen=True)
class Range:
    """The valid values of a numeric setting: ``low``..``high`` (``None``: unbounded),
    each end open or closed, integers only with ``integer``; NaN and +-inf never."""

    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def describe(self):
        """E.g. ``an integer >= 1`` or ``a finite number in (0, 1]``."""
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return kind

    def contains(self, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        if not math.isfinite(v) or (self.integer and v != int(v)):
            return False
        if self.low is not None and (v <= self.low if self.low_open else v < self.low):
            return False
        return self.high is None or (v < self.high if self.high_open else v <= self.high)

    def check(self, name, v):
        """``v`` unchanged, or a ValueError naming ``name`` and the valid range."""
        if not self.contains(v):
            raise ValueError(f"{name} must be {self.describe()}, got {v!r}")
        return v


COUNT = Range(1, integer=True)              # 1, 2, ...
SEED = Range(0, integer=True)               # numpy's SeedSequence takes non-negative integers of any size
POSITIVE = Range(0, low_open=True)          # finite, > 0

# Upper bounds of the command line's numbers, checked while parsing, before any work. Generous:
# they only refuse what would exhaust memory or time before the first line of output, or overflow
# the arithmetic (each bound's reason: docs/settings.md).
MAX_ITERATIONS = 100_000   # 2000x the default 50 (~27 days of point-button meta-iterations)
MAX_TASKS = 1_000          # 200x the paper's 5 per iteration and META_TEST_TASKS
MAX_LOCAL_STEPS = 100      # 20x the paper's K = 5 (the meta-gradient's memory grows with K)
MAX_EPISODES = 1_000       # 167-333x the families' batches (1000 point-button episodes: ~0.5 GB)
MAX_COST_LIMIT = 1e6       # any limit above ~1e4 never binds; 1e160 overflowed eq. 9's dual
MAX_WORKERS = 1_024        # and at most the tasks (and, for the process backend, the cores): cli.py caps it

ITERATIONS = Range(1, MAX_ITERATIONS, integer=True)
TASKS = Range(1, MAX_TASKS, integer=True)
LOCAL_STEPS_RANGE = Range(1, MAX_LOCAL_STEPS, integer=True)
ADAPT_STEPS = Range(0, MAX_LOCAL_STEPS, integer=True)   # meta-testing: k = 0 alone is valid
EPISODES = Range(1, MAX_EPISODES, integer=True)
COST_LIMIT = Range(0, MAX_COST_LIMIT)       # finite, >= 0: see Config.cost_limit
WORKERS = Range(1, MAX_WORKERS, integer=True)
SMOOTH = Range(1, MAX_ITERATIONS, integer=True)          # plot: a moving average no longer than any run


def setting(default, doc, valid=None, choices=None):
    """A :class:`Config` field: its default, its one-line documentation (with the
    source of the default), and its valid :class:`Range` (numbers) or ``choices``
    (names). The command line's options are these fields (cli.py reads all four)."""
    return field(default=default, metadata={"doc": doc, "range": valid, "choices": choices})


@dataclass(frozen=True)
class Config:
    """One run's settings; each field's documentation is ``field_doc(name)``
    (listed below) and its valid range ``field_range(name)``; measurements behind
    the defaults: docs/settings.md."""

    family: str = setting("point-button", f"Task family of Table 1: {', '.join(FAMILY_DEFAULTS)}.",
                          choices=tuple(FAMILY_DEFAULTS))
    algo: str = setting("meta-cpo", "Algorithm: meta-cpo (Algorithm 1), meta-trpo (the same without the cost "
                        "constraint), cpo / trpo (one policy on pooled tasks, Fisher metric).", choices=ALGOS)
    iterations: int = setting(META_ITERATIONS, "Meta-iterations (baselines: iterations) of the whole run; on "
                              "--resume the new total (~23 s per default point-button meta-iteration, 2 workers).",
                              ITERATIONS)
    tasks: int = setting(META_TASKS, "Tasks sampled per iteration (M; paper: 5).", TASKS)
    local_steps: int = setting(LOCAL_STEPS, "Local CPO steps per task (K; paper: 5).", LOCAL_STEPS_RANGE)
    episodes: int = setting(None, "Episodes per batch; None: the family's, about 3000 steps (authors' code).",
                            EPISODES)
    seed: int = setting(0, "Seed of everything random: initial parameters, tasks, every batch.", SEED)
    cost_measure: str = setting(COST_MEASURE, "What the cost limit is on: discounted, the paper's J_C (Section 2; "
                                "derivations D36-D39), or episode, the undiscounted cost per episode.",
                                choices=COST_MEASURES)
    car_walls: str = setting("paper", "Car-Circle-Hazard's walls: paper, at s x r_c (Table 1's caption), or stock, "
                             "Safety-Gymnasium's (the first campaign's).", choices=CAR_WALLS)
    cost_limit: float = setting(None, "Cost limit per episode, in cost_measure; None: the family's training "
                                "limit (paper, Fig. 5); 0: no cost at all.", COST_LIMIT)
    hidden: tuple = setting(HIDDEN, "Hidden layer sizes of the policy MLP (paper, Section 5).")
    gamma: float = setting(GAMMA, "Discount factor (authors' code).", Range(0, 1, low_open=True))
    gae_lambda: float = setting(GAE_LAMBDA, "GAE lambda (authors' code).", Range(0, 1))
    vf_iters: int = setting(VF_ITERS, "L-BFGS iterations per value-function fit (authors' code).", COUNT)
    vf_ftol: float = setting(None, "Stop a value fit early once an L-BFGS iteration lowers the loss by less "
                             "(L-BFGS-B's ftol); None: scipy's 2.2e-9 (measured: docs/settings.md).", POSITIVE)
    inner_delta: float = setting(INNER_DELTA, "Trust radius of the local steps (eq. 9; authors' code): a KL "
                                 "radius with inner_metric fisher, Euclidean with identity.", POSITIVE)
    outer_delta: float = setting(OUTER_DELTA, "Trust radius of the meta step, eq. 12 (authors' code).", POSITIVE)
    baseline_delta: float = setting(BASELINE_DELTA, "KL trust radius of the CPO / TRPO baselines' Fisher-metric "
                                    "steps (safety-starter-agents' target KL).", POSITIVE)
    outer_metric: str = setting(None, "Metric of the meta step (eq. 12): identity (the paper's) or fisher; "
                                "None: the algorithm's (config.default_metrics).", choices=OUTER_METRICS)
    inner_metric: str = setting(None, "Metric of the local steps (eq. 9): identity (the paper's) or fisher "
                                "(docs/fisher-metric.md); None: the algorithm's (config.default_metrics).",
                                choices=INNER_METRICS)
    ls_kl: float = setting(LINE_SEARCH_KL, "Mean-KL bound every line search with the Euclidean metric "
                           "enforces (safety-starter-agents' target KL; derivations D19).", POSITIVE)
    ls_decay: float = setting(LINE_SEARCH_DECAY, "Backtracking factor of the line searches (derivations, "
                              "section 7, D18).", Range(0, 1, low_open=True, high_open=True))
    ls_steps: int = setting(LINE_SEARCH_STEPS, "Backtracking steps of the line searches (derivations, "
                            "section 7, D18).", COUNT)
    cg_iters: int = setting(CG_ITERS, "Conjugate-gradient iterations of Fisher solves (derivations, "
                            "section 7).", COUNT)
    cg_damping: float = setting(CG_DAMPING, "Damping added to Fisher-vector products (derivations, "
                                "section 7).", Range(0))
    fisher_subsample: int = setting(FISHER_SUBSAMPLE, "A step's Fisher matrix from every s-th observation of "
                                    "its batch (OpenAI Baselines' TRPO: 5); 1: all of them.",
                                    Range(1, 1000, integer=True))
    recover_above_limit: bool = setting(RECOVER_ABOVE_LIMIT, "Above the cost limit, CPO's recovery step (eq. 4; "
                                        "derivations D34); False: eq. 9 as it is (measured: docs/settings.md).")
    task: dict = setting(None, "Train on this one task (its parameters, checked against Table 1's ranges) "
                         "instead of sampling tasks; None: sampled.")
    split_meta_gradient: bool = setting(None, "Meta algorithms: each task's part of eq. 11 on its worker, equal to "
                                        "one pass over all tasks (False) up to rounding; None: True for them.")
    replay_warm_start: bool = setting(REPLAY_WARM_START, "Fisher local steps: the meta-gradient's replay starts "
                                      "its CG solves from the step taken's solutions (same tolerance, other floats).")

    def __post_init__(self):
        if self.family not in FAMILY_DEFAULTS:
            raise ValueError(f"unknown task family {self.family!r}; valid names: {', '.join(FAMILY_DEFAULTS)}")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; valid: {', '.join(ALGOS)}")
        for name, metric in zip(("inner_metric", "outer_metric"), default_metrics(self.algo)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, metric)
        if self.split_meta_gradient is None:
            object.__setattr__(self, "split_meta_gradient", self.meta)
        if self.outer_metric not in OUTER_METRICS:
            raise ValueError(f"unknown outer metric {self.outer_metric!r}; valid: {', '.join(OUTER_METRICS)}")
        if self.inner_metric not in INNER_METRICS:
            raise ValueError(f"unknown inner metric {self.inner_metric!r}; valid: {', '.join(INNER_METRICS)}")
        if self.cost_measure not in COST_MEASURES:
            raise ValueError(f"unknown cost measure {self.cost_measure!r}; valid: {', '.join(COST_MEASURES)}")
        if self.car_walls not in CAR_WALLS:
            raise ValueError(f"unknown car walls {self.car_walls!r}; valid: {', '.join(CAR_WALLS)}")
        for f in fields(self):
            valid, v = f.metadata["range"], getattr(self, f.name)
            if valid is not None and v is not None:
                valid.check(f.name, v)
        if self.cost_limit == 0:   # -0.0 (a valid limit) is 0 ("limit -0" said nothing more)
            object.__setattr__(self, "cost_limit", abs(self.cost_limit))
        if not self.hidden or not all(COUNT.contains(h) for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty list of integers >= 1, got {self.hidden!r}")

    @property
    def n_episodes(self):
        """Episodes per batch: ``episodes`` or the family's default."""
        return FAMILY_DEFAULTS[self.family].episodes if self.episodes is None else int(self.episodes)

    @property
    def train_cost_limit(self):
        """The cost limit of training: ``cost_limit`` or the family's training limit."""
        return FAMILY_DEFAULTS[self.family].cost_limit_train if self.cost_limit is None else float(self.cost_limit)

    @property
    def constrained(self):
        """CPO steps (meta-cpo, cpo) or trust-region-only steps (meta-trpo, trpo)."""
        return self.algo in ("meta-cpo", "cpo")

    @property
    def meta(self):
        return self.algo.startswith("meta-")


def effective(config, name):
    """Field ``name`` of ``config`` as the run uses it: ``episodes`` and ``cost_limit`` with
    the family's value for ``None`` (:attr:`Config.n_episodes`, :attr:`Config.train_cost_limit`),
    ``hidden`` as a tuple; the others as they are."""
    if name == "episodes":
        return config.n_episodes
    if name == "cost_limit":
        return config.train_cost_limit
    if name == "hidden":
        return tuple(config.hidden)
    return getattr(config, name)


def field_doc(name):
    """The documentation line of :class:`Config` field ``name``."""
    return Config.__dataclass_fields__[name].metadata["doc"]


def field_range(name):
    """The valid :class:`Range` of :class:`Config` field ``name`` (``None``: not a number)."""
    return Config.__dataclass_fields__[name].metadata["range"]


def field_choices(name):
    """The valid names of :class:`Config` field ``name`` (``None``: not a name)."""
    return Config.__dataclass_fields__[name].metadata["choices"]


Config.__doc__ += "\n\n" + "\n".join(
    f"    ``{f.name}`` (default {f.default!r}{'; ' + f.metadata['range'].describe() if f.metadata['range'] else ''}): "
    f"{f.metadata['doc']}" for f in fields(Config))
