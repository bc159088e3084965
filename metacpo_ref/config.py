"""Every default of metacpo_ref, in one place, each with its source.

Sources: "paper" is Meta-CPO (arXiv 2312.10230, Table 1, Section 5, Fig. 5);
"authors' code" is the paper's public repository (its settings as we read
them); "derivations" is docs/derivations.md in this repository (the CPO step,
its line search and its derivative, the cost measures, with numbered equations D1-D39);
"measured" means chosen here from a measurement, described beside it.
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
BASELINE_CG_TOL = 1e-10  # the CPO / TRPO baselines' CG stops at this relative residual ||r|| / ||v||:
                         # the residual_tol default of rllab's and OpenAI baselines' cg (a bound on r'r
                         # there); with CG_ITERS iterations it is the iteration count that stops it
LINE_SEARCH_DECAY = 0.8  # derivations, section 7 (D18, D19)
LINE_SEARCH_STEPS = 15   # derivations, section 7 (D18)

# --- the Fisher-metric local step (inner_metric="fisher", beyond the paper) -----
# Its chain is differentiated exactly (step/dco.py, docs/fisher-metric.md), so the
# H^{-1} products must be exact to the gradient check's tolerance, not CG's usual 10
# iterations (relative residual 0.06 at n = 1492 and 0.17 at n = 6052, measured on
# synthetic batches of 1000 steps, damping 0.1).
FISHER_DIRECT_MAX = 300    # n <= this: dense H from n Fisher-vector products, Cholesky (exact)
FISHER_CG_TOL = 1e-10      # else CG to this relative residual; measured: 61 iterations at
                           # n = 1492, 95 at n = 6052 (same batches as above)
FISHER_CG_MAX_ITERS = 250  # CG's cap (a warning says when the tolerance was not reached)

# --- meta-training (Algorithm 1) --------------------------------------------
META_ITERATIONS = 50     # issue 19's campaign: 4.5M env steps per run (5 tasks x 6 batches x ~3000 steps
                         # each), measured on every family; 100 (9M) on point-button and point-circle gave
                         # the same verdicts (docs/results.md), so make train (point-button) keeps 50
META_TASKS = 5           # paper: 5 tasks per meta-iteration
LOCAL_STEPS = 5          # paper: 5 local updates
SEEDS = 3                # paper: 3 random seeds


@dataclass(frozen=True)
class Family:
    """A Safety-Gymnasium task family of Table 1.

    ``train`` and ``test`` map each task parameter to its inclusive range
    ``(low, high)``; integer parameters are listed in ``int_params``.
    """

    name: str
    base_id: str
    obs_dim: int
    episode_len: int
    cost_limit_train: float
    cost_limit_test: float
    train: dict
    test: dict
    int_params: tuple = ()
    episodes: int = 6    # episodes per batch: about 3000 steps (authors' code)
    stock_walls_drop: tuple = ()   # parameters a task of the stock walls lacks (Config.car_walls="stock")
    act_dim: int = 2     # Safety-Gymnasium's point and car robots both have two actuators


FAMILIES = {
    "point-circle": Family(
        name="point-circle",
        base_id="SafetyPointCircle1-v0",
        obs_dim=28,          # Safety-Gymnasium 1.0.0, stock circle task
        episode_len=500,     # Safety-Gymnasium 1.0.0, stock circle task
        # authors' code uses 10. Measured here: a uniformly
        # random policy collects 13.3 per episode on train tasks (30 episodes,
        # heavy-tailed: median 0) and 2.3 on test tasks; a reward-greedy policy
        # that circles at r_c spends about half of each lap beyond the walls at
        # 0.65-0.75 r_c (~250 per episode). 10 binds for both in training.
        cost_limit_train=10.0,
        cost_limit_test=10.0,
        train={"radius": (1.0, 1.5), "wall_factor": (0.65, 0.75)},   # paper Table 1
        test={"radius": (2.0, 2.5), "wall_factor": (0.55, 0.65)},    # paper Table 1
        episodes=6,
    ),
    "car-circle-hazard": Family(
        name="car-circle-hazard",
        base_id="SafetyCarCircle1-v0",
        obs_dim=56,
        episode_len=500,
        cost_limit_train=10.0,   # paper, Fig. 5b
        cost_limit_test=5.0,     # paper, Fig. 5b (tighter in meta-testing)
        # Table 1's caption: "For P-Circle and C-Circle-H, s x r_c determines the wall
        # distance, and the same s is applied for both environments": P-Circle's ranges.
        train={"radius": (0.7, 1.0), "num_hazards": (3, 7), "wall_factor": (0.65, 0.75)},   # paper Table 1
        test={"radius": (1.2, 1.5), "num_hazards": (7, 12), "wall_factor": (0.55, 0.65)},   # paper Table 1
        int_params=("num_hazards",),
        episodes=6,
        # the first campaign (issue 19) kept Safety-Gymnasium's walls at |x| = 1.125: its tasks
        # have no wall_factor (Config.car_walls="stock", what its checkpoints load with)
        stock_walls_drop=("wall_factor",),
    ),
    "point-button": Family(
        name="point-button",
        base_id="SafetyPointButton0-v0",   # level 0: no gremlins
        obs_dim=60,
        episode_len=1000,
        # authors' code uses 10. Measured here: a uniformly
        # random policy collects 36.3 per episode on train tasks (30 episodes,
        # heavy-tailed: median 0) and 3.2 on test tasks; a reward-greedy policy
        # drives through hazards and wrong buttons on its way. 10 binds for
        # both in training.
        cost_limit_train=10.0,
        cost_limit_test=10.0,
        train={"num_buttons": (3, 6), "num_hazards": (3, 6), "extent": (1.75, 2.0)},  # Table 1
        test={"num_buttons": (6, 10), "num_hazards": (6, 10), "extent": (2.5, 3.0)},  # Table 1
        int_params=("num_buttons", "num_hazards"),
        episodes=3,
    ),
}

# Hazards added to the car-circle and point-button tasks: Safety-Gymnasium's Hazards
# geom with these sizes (added in metacpo_ref/envs).
HAZARD_SIZE = 0.2
CAR_HAZARD_KEEPOUT = 0.3
CAR_HAZARD_EXTENT = 1.4
BUTTON_HAZARD_KEEPOUT = 0.18


# --- constraint handling: how the measured cost is fed to eq. 9 ------------------
# Above the limit, recover. When a batch's measured cost is above the limit
# (b_hat > 0), the step is eq. 4's recovery step (pure cost descent) even where
# eq. 9's linear model says that a mixed step could reach the limit exactly; at
# or below the limit, eq. 9 as it is. Measured (docs/results.md, "CPO at its
# limit"): aiming exactly at the limit, our CPO settled 26-39% above it on
# point-circle (3 seeds, limits 10 and 25), because the mixed steps' predicted
# cost decrease did not materialise (observed change ~ +10 per episode against a
# predicted -10 to -15); OmniSafe's CPO, whose unit error makes every step above
# the limit a recovery step, settles at or below it. False: the previous rule.
RECOVER_ABOVE_LIMIT = True

ALGOS = ("meta-cpo", "meta-trpo", "cpo", "trpo")

# --- the cost measure: what the limit is on (docs/derivations.md, section 12) ------
# discounted: the paper's constraint, J_C(pi) = E[sum_t gamma^t C(s_t, a_t)] <= h (Section 2),
#   discounted from each episode's first step; about the cost of an episode's first ~100 steps
#   (sum_t gamma^t = 99.3 over 500 steps at gamma 0.99).
# episode: the undiscounted cost per episode (Safety-Gymnasium's and OmniSafe's convention, and
#   the first campaign's, issue 19); for comparisons with their benchmarks.
COST_MEASURES = ("discounted", "episode")
COST_MEASURE = "discounted"   # paper, Section 2
CAR_WALLS = ("paper", "stock")
OUTER_METRICS = ("identity", "fisher")

# --- the metrics of the meta algorithms' steps (issue 15) -------------------------
# (inner, outer): the metric of the local steps (eq. 9) and of the meta step (eq. 12).
PAPER_METRICS = ("identity", "identity")   # paper: Euclidean trust regions (Limitations section)
PAPER = dict(zip(("inner_metric", "outer_metric"), PAPER_METRICS))   # Config(**PAPER, ...): the paper's steps
META_CPO_METRICS = ("fisher", "fisher")    # measured (issue 15; docs/results.md "Which metric"): Meta-CPO
# with each of the four pairs, car-circle-hazard and point-button, 2 seeds, 3 tasks x K = 2 x 3 episodes,
# 40 meta-iterations (540k / 1.08M env steps). Against the paper's pair, Fisher x Fisher had the lower cost in
# all 4 (family, seed) runs (meta-test cost after 5 adaptation steps 49.8 / 34.1 vs 88.7 / 64.5 on
# car-circle-hazard, limit 5; 8.8 / 4.5 vs 28.4 / 7.9 on point-button, limit 10) and the higher return
# (training, adapted, last 10 iterations: 0.92 / 1.02 / 1.47 / 3.64 vs 0.46 / 0.13 / 0.49 / 1.26), at ~2x
# the seconds per iteration. identity x fisher learned more return in training but missed the test limit
# more often; fisher x identity was no better than the paper's. The paper's pair: Config(**PAPER).


def default_metrics(algo):
    """``(inner_metric, outer_metric)`` of ``algo`` when not given: Meta-CPO's measured
    choice (``META_CPO_METRICS``); the paper's for Meta-TRPO (issue 19 runs it as the
    paper does) and for the baselines (which use neither: their step is Fisher, KL radius
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

# Upper bounds of the command line's numbers (issue 32), checked while parsing, before any work.
# Generous: far beyond any run of the paper or of this repository, they only refuse what would
# exhaust memory or time before the first line of output, or overflow the arithmetic.
MAX_ITERATIONS = 100_000   # 2000x the default 50; at ~23 s per point-button meta-iteration (README) ~27 days
MAX_TASKS = 1_000          # 200x the paper's 5 per iteration, 200x META_TEST_TASKS; the tasks are sampled
                           # (and meta-testing holds them all) before anything is printed
MAX_LOCAL_STEPS = 100      # 20x the paper's K = 5; the meta-gradient differentiates through all K steps, so its
                           # memory grows with K (each task holds K + 1 batches)
MAX_EPISODES = 1_000       # 167-333x the families' batches of 3-6 episodes: a batch of 1000 point-button episodes
                           # is 1M steps, ~0.5 GB of observations; 10^9 allocated ~4 GB in one call Ctrl-C
                           # could not stop (issue 32)
MAX_COST_LIMIT = 1e6       # costs are >= 0 and at most a few per step over <= 1000 steps, so any limit above ~1e4
                           # never binds; 1e160 passed and then overflowed (b^2 in eq. 9's dual) in iteration 0
MAX_WORKERS = 1_024        # and at most the tasks (and, for the process backend, the cores): cli.py caps it

ITERATIONS = Range(1, MAX_ITERATIONS, integer=True)
TASKS = Range(1, MAX_TASKS, integer=True)
LOCAL_STEPS_RANGE = Range(1, MAX_LOCAL_STEPS, integer=True)
ADAPT_STEPS = Range(0, MAX_LOCAL_STEPS, integer=True)   # meta-testing: k = 0 alone is valid
EPISODES = Range(1, MAX_EPISODES, integer=True)
COST_LIMIT = Range(0, MAX_COST_LIMIT)       # finite, >= 0: see Config.cost_limit
WORKERS = Range(1, MAX_WORKERS, integer=True)
SMOOTH = Range(1, MAX_ITERATIONS, integer=True)          # plot: a moving average no longer than any run


def setting(default, doc, valid=None):
    """A :class:`Config` field: its default, its one-line documentation (with the
    source of the default) and, for numbers, its valid :class:`Range`. The CLI's
    options read their defaults, help lines and ranges from here."""
    return field(default=default, metadata={"doc": doc, "range": valid})

INNER_METRICS = ("identity", "fisher")


@dataclass(frozen=True)
class Config:
    """One run's settings; each field's documentation is ``field_doc(name)``
    (listed below) and its valid range ``field_range(name)``."""

    family: str = setting("point-button", f"Task family of Table 1: {', '.join(FAMILIES)}.")
    algo: str = setting("meta-cpo", "Algorithm: meta-cpo (Algorithm 1), meta-trpo (the same without the cost "
                        "constraint), cpo / trpo (one policy on pooled tasks, Fisher metric).")
    iterations: int = setting(META_ITERATIONS, "Meta-iterations (baselines: iterations) of the whole run, "
                              "counted from 0; on --resume the new total (measured: ~23 s per default "
                              "point-button meta-iteration, 2 workers, ~36 s with one, README). CPO / TRPO collect "
                              "one batch per "
                              "task per iteration, a meta-iteration K + 1: at K = 5, 300 match 50.", ITERATIONS)
    tasks: int = setting(META_TASKS, "Tasks sampled per iteration (M; paper: 5).", TASKS)
    local_steps: int = setting(LOCAL_STEPS, "Local CPO steps per task (K; paper: 5).", LOCAL_STEPS_RANGE)
    episodes: int = setting(None, "Episodes per batch; None: the family's (6 for the circle families, "
                            "3 for point-button: ~3000 steps, authors' code).", EPISODES)
    seed: int = setting(0, "Seed of everything random: initial parameters, tasks, every batch "
                        "(keyed by seed, iteration, task, step).", SEED)
    cost_measure: str = setting(COST_MEASURE, "What the cost limit is on: discounted, the paper's J_C = "
                                "E[sum_t gamma^t C_t] from each episode's first step (Section 2), or episode, "
                                "the undiscounted cost per episode (Safety-Gymnasium's and OmniSafe's "
                                "convention; runs made before this setting). Every place the limit meets the "
                                "data uses it: b of eq. 9 and the cost surrogate (derivations D36-D39), the line "
                                "search, the recover rule, G of eq. 10, meta-testing, the progress line.")
    car_walls: str = setting("paper", "Car-Circle-Hazard's walls: paper, at s x r_c with s from Point-Circle's "
                             "ranges (Table 1's caption; a wall_factor task key), or stock, Safety-Gymnasium's "
                             "|x| = 1.125 (the first campaign's runs). Other families ignore it.")
    cost_limit: float = setting(None, "Cost limit per episode, in cost_measure; None: the family's "
                                "training limit (paper, Fig. 5). 0 is valid and means no cost at all: a batch "
                                "with any cost event violates it (b > 0), so every step works on the cost "
                                "first; negative limits are refused (costs are >= 0: nothing meets them), and so are "
                                "limits above 1e6 (they never bind, and overflow the arithmetic from ~1e154).",
                                COST_LIMIT)
    hidden: tuple = setting(HIDDEN, "Hidden layer sizes of the policy MLP (paper, Section 5).")
    gamma: float = setting(GAMMA, "Discount factor (authors' code).", Range(0, 1, low_open=True))
    gae_lambda: float = setting(GAE_LAMBDA, "GAE lambda (authors' code).", Range(0, 1))
    vf_iters: int = setting(VF_ITERS, "L-BFGS iterations per value-function fit (authors' code).", COUNT)
    vf_ftol: float = setting(
        None, "Stop a value fit before vf_iters once an L-BFGS iteration lowers the loss by less than vf_ftol "
        "(times max(loss, 1); L-BFGS-B's ftol). None: scipy's default 2.2e-9, which stopped none of the "
        "measured fits early; every run under results/. Measured (issue 18; 12 warm-started fits per family on "
        "the batches of the initial policy, 2 tasks x 3 batches): the fits are far from converged at 25 "
        "iterations (100 lower the losses 2-30x); vf_ftol=1e-3 stops after 7 (point-button) / 14 "
        "(car-circle-hazard) iterations on average, 1/3 / 3/5 of the fitting time, at 1.8-3.5x / 1.5-2.7x the "
        "reward value loss after the fit. Not the default until a learning comparison (one family, 2 seeds) "
        "shows that learning does not get worse.", POSITIVE)
    inner_delta: float = setting(INNER_DELTA, "Trust radius of the local steps, eq. 9: Euclidean (0.5 |x|^2 <= "
                                 "delta) with inner_metric identity, the authors' code's value; a KL radius (0.5 "
                                 "x'Hx <= delta, H the Fisher matrix) with inner_metric fisher, Meta-CPO's default.",
                                 POSITIVE)
    outer_delta: float = setting(OUTER_DELTA, "Trust radius of the meta step, eq. 12 (authors' code).", POSITIVE)
    baseline_delta: float = setting(BASELINE_DELTA, "KL trust radius of the CPO / TRPO baselines' Fisher-metric "
                                    "steps (safety-starter-agents' target KL).", POSITIVE)
    outer_metric: str = setting(None, "Metric of the meta step: identity, the paper's Euclidean trust "
                                "region (eq. 12, Limitations section), or fisher (conjugate gradient on "
                                "Fisher-vector products of the pre-adaptation batches). Not given (None): the "
                                "algorithm's, config.default_metrics: fisher for meta-cpo (measured, "
                                "docs/results.md 'Which metric'), identity for meta-trpo (the paper's).")
    inner_metric: str = setting(None, "Metric of the local steps: identity, the paper's Euclidean step "
                                "(eq. 9 with H = I, radius inner_delta), or fisher: eq. 9 with the Fisher matrix "
                                "H(phi_k) of batch k (damping cg_damping), inner_delta read as a KL radius, the "
                                "chain differentiated exactly, terms through H(phi_k) included "
                                "(docs/fisher-metric.md). Not given (None): fisher for meta-cpo (measured, "
                                "docs/results.md 'Which metric'), identity for meta-trpo (the paper's).")
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
    recover_above_limit: bool = setting(RECOVER_ABOVE_LIMIT, "Above the cost limit (measured b_hat > 0) take "
                                        "CPO's recovery step, pure cost descent (eq. 4; derivations D34), in "
                                        "every constrained step: the CPO baseline, Meta-CPO's local and outer "
                                        "steps, meta-testing. False: eq. 9 as it is, the mixed step aimed "
                                        "exactly at the limit (settles 26-39% above it: docs/results.md).")
    task: dict = setting(None, "Train on this one task (its parameters, e.g. {'radius': 1.5, 'wall_factor': "
                         "0.75}, checked against Table 1's ranges) instead of sampling tasks; None: sampled.")
    split_meta_gradient: bool = setting(
        None, "Meta-CPO, Meta-TRPO: compute each task's part of eq. 11 (F_i, G_i, dF_i, dG_i) at the end of its "
        "inner loop, on the worker that holds the task's data, and only sum them in the main process (issue 18: less serial "
        "work, measured in README's scaling table). The same gradient up to rounding, not to the bit: one "
        "reverse pass over all tasks adds the tasks' terms in another order (measured: max |difference| "
        "5.6e-17, in 54% of the entries, 3 synthetic tasks), so a run's later iterations drift apart by "
        "rounding. False (--whole-meta-gradient): one reverse pass over all tasks in the main process, the "
        "default until issue 18's second session (the runs under results/ started before it keep it). Not given "
        "(None): True for the meta algorithms, False for cpo and trpo (which have no meta-gradient).")

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown task family {self.family!r}; valid names: {', '.join(FAMILIES)}")
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
        return FAMILIES[self.family].episodes if self.episodes is None else int(self.episodes)

    @property
    def train_cost_limit(self):
        """The cost limit of training: ``cost_limit`` or the family's training limit."""
        return FAMILIES[self.family].cost_limit_train if self.cost_limit is None else float(self.cost_limit)

    @property
    def constrained(self):
        """CPO steps (meta-cpo, cpo) or trust-region-only steps (meta-trpo, trpo)."""
        return self.algo in ("meta-cpo", "cpo")

    @property
    def meta(self):
        return self.algo.startswith("meta-")


def field_doc(name):
    """The documentation line of :class:`Config` field ``name``."""
    return Config.__dataclass_fields__[name].metadata["doc"]


def field_range(name):
    """The valid :class:`Range` of :class:`Config` field ``name`` (``None``: not a number)."""
    return Config.__dataclass_fields__[name].metadata["range"]


Config.__doc__ += "\n\n" + "\n".join(
    f"    ``{f.name}`` (default {f.default!r}{'; ' + f.metadata['range'].describe() if f.metadata['range'] else ''}): "
    f"{f.metadata['doc']}" for f in fields(Config))
