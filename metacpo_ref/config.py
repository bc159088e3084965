"""Every default of metacpo_ref, in one place, each with its source.

Sources: "paper" is Meta-CPO (arXiv 2312.10230, Table 1, Section 5, Fig. 5);
"authors' code" is the paper's public repository (its settings as we read
them); "derivations" is docs/derivations.md in this repository (the CPO step,
its line search and its derivative, with numbered equations D1-D33);
"measured" means chosen here from a measurement, described beside it.
Cost limits are on the UNDISCOUNTED sum of costs over one episode.
"""
from dataclasses import dataclass

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
INNER_DELTA = 0.01       # authors' code: Euclidean trust radius of local steps
BASELINE_DELTA = 0.01    # safety-starter-agents' CPO/TRPO target KL: the KL trust radius of the
                         # baselines' Fisher-metric steps (0.5 x'Hx <= delta, H the Fisher matrix)
LINE_SEARCH_KL = 0.01    # safety-starter-agents' target KL again, as the mean-KL bound every line
                         # search enforces with the Euclidean metric (paper, Section 4: "updates may
                         # violate ... KL-divergence, requiring a backtracking line search"); derivations D19
OUTER_DELTA = 0.01       # authors' code: radius of the meta step (eq. 12)
CG_ITERS = 10            # derivations, section 7 (10-15 iterations)
CG_DAMPING = 0.1         # derivations, section 7
LINE_SEARCH_DECAY = 0.8  # derivations, section 7 (D18, D19)
LINE_SEARCH_STEPS = 15   # derivations, section 7 (D18)

# --- meta-training (Algorithm 1) --------------------------------------------
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
        train={"radius": (0.7, 1.0), "num_hazards": (3, 7)},          # paper Table 1
        test={"radius": (1.2, 1.5), "num_hazards": (7, 12)},          # paper Table 1
        int_params=("num_hazards",),
        episodes=6,
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
OUTER_METRICS = ("identity", "fisher")


@dataclass(frozen=True)
class Config:
    """One run's settings; every field defaults to the values above.

    ``cost_limit=None`` means the family's training limit. ``outer_metric``:
    "identity" is the paper's Euclidean trust region for the meta step
    (eq. 12, Limitations section); "fisher" uses conjugate gradient on
    Fisher-vector products of the pre-adaptation batches.
    """

    family: str = "point-button"
    algo: str = "meta-cpo"
    iterations: int = 500
    tasks: int = META_TASKS
    local_steps: int = LOCAL_STEPS
    episodes: int = None            # None: the family's default
    seed: int = 0
    cost_limit: float = None        # None: the family's training limit
    hidden: tuple = HIDDEN
    gamma: float = GAMMA
    gae_lambda: float = GAE_LAMBDA
    vf_iters: int = VF_ITERS
    inner_delta: float = INNER_DELTA
    outer_delta: float = OUTER_DELTA
    baseline_delta: float = BASELINE_DELTA
    outer_metric: str = "identity"
    ls_kl: float = LINE_SEARCH_KL
    ls_decay: float = LINE_SEARCH_DECAY
    ls_steps: int = LINE_SEARCH_STEPS
    cg_iters: int = CG_ITERS
    cg_damping: float = CG_DAMPING
    recover_above_limit: bool = RECOVER_ABOVE_LIMIT
    task: dict = None               # None: tasks sampled per iteration; else the params of one fixed task

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"unknown task family {self.family!r}; valid names: {', '.join(FAMILIES)}")
        if self.algo not in ALGOS:
            raise ValueError(f"unknown algorithm {self.algo!r}; valid: {', '.join(ALGOS)}")
        if self.outer_metric not in OUTER_METRICS:
            raise ValueError(f"unknown outer metric {self.outer_metric!r}; valid: {', '.join(OUTER_METRICS)}")
        for name in ("iterations", "tasks", "local_steps", "vf_iters", "ls_steps", "cg_iters"):
            if int(getattr(self, name)) < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("inner_delta", "outer_delta", "baseline_delta", "ls_kl", "ls_decay"):
            v = getattr(self, name)
            if not (v > 0):
                raise ValueError(f"{name} must be > 0, got {v}")
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("gamma must be in (0, 1] and gae_lambda in [0, 1]")

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
