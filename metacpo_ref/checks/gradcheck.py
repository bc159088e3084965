"""Finite-difference checks of every hand-written or autograd derivative.

Each check is a function ``() -> dict(name, max_rel_error, tol, passed)`` on a
small seeded problem; the relative error is ``||an - fd|| / max(||fd||, 1e-12)``
over the whole Jacobian (or VJP). ``python cli.py gradcheck`` runs them all.
"""
import functools

import numpy as np


def rel_error(an, fd):
    """Norm-wise relative error ``||an - fd|| / max(||fd||, 1e-12)``."""
    an, fd = np.ravel(an), np.ravel(fd)
    return float(np.linalg.norm(an - fd) / max(np.linalg.norm(fd), 1e-12))


def central_diff(f, p, eps_scale=1e-6):
    """Jacobian of ``f`` at the array ``p`` by central differences, shape (f.size, p.size).

    The step is ``eps_scale * max(1, |p_j|)`` per coordinate (docs/derivations.md, end of section 8).
    """
    p = np.asarray(p, dtype=np.float64)
    f0 = np.ravel(f(p))
    J = np.zeros((f0.size, p.size))
    flat = p.ravel()
    for j in range(p.size):
        eps = eps_scale * max(1.0, abs(flat[j]))
        e = np.zeros(p.size)
        e[j] = eps
        J[:, j] = (np.ravel(f((flat + e).reshape(p.shape))) - np.ravel(f((flat - e).reshape(p.shape)))) / (2 * eps)
    return J


def result(name, err, tol):
    return {"name": name, "max_rel_error": float(err), "tol": float(tol), "passed": bool(err <= tol)}


# --- checks of the CPO layer (cpo.py, dco.py) --------------------------------
def cpo_instance(case, dense, seed=0, n=5):
    """A seeded eq. 9 instance in ``case`` well away from the case boundaries:
    ``b = t sqrt(2 delta s)`` with t = -1.5 (trust), 0.3 (both; g = u + a with u
    H^{-1}-orthogonal to a, so the trust step violates the constraint), 1.5 (recovery)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n))
    H = M @ M.T / n + 0.5 * np.eye(n) if dense else None
    a, u = rng.standard_normal(n), rng.standard_normal(n)
    hinv = (lambda v: np.linalg.solve(H, v)) if dense else (lambda v: v)
    s = a @ hinv(a)
    u = u - (u @ hinv(a)) / s * a
    delta = 0.5
    t = {"trust": -1.5, "both": 0.3, "recovery": 1.5}[case]
    return {"g": u + a, "a": a, "b": t * np.sqrt(2 * delta * s), "delta": delta, "H": H}


def _cpo_check(case, arg, tol=1e-6):
    """Jacobian of cpo_layer in ``arg`` (autograd through the hand-written VJP) vs
    central differences; identity metric, dense H for ``arg == "H"``."""

    def check():
        from autograd import jacobian

        from metacpo_ref.step.cpo import solve_step
        from metacpo_ref.step.dco import cpo_layer

        p = cpo_instance(case, dense=arg == "H")
        if solve_step(**p).case != case:
            return result(f"cpo_layer_{case}_{arg}", np.inf, tol)
        f = lambda v: cpo_layer(**{**p, arg: v})
        J_an = np.reshape(jacobian(f)(p[arg]), (p["g"].size, -1))
        return result(f"cpo_layer_{case}_{arg}", rel_error(J_an, central_diff(f, p[arg])), tol)

    check.__name__ = f"check_cpo_layer_{case}_{arg}"
    return check


CPO_CHECKS = [_cpo_check(case, arg) for case in ("trust", "both", "recovery")
              for arg in ("g", "a", "b", "delta", "H")]


# --- checks of the policy (policy.py, advantages.py) -------------------------
def _policy_problem(seed=0):
    """A tiny seeded policy problem: spec, behaviour theta, a theta nearby, data."""
    from metacpo_ref.model.policy import PolicySpec, init_theta, log_prob

    rng = np.random.default_rng(seed)
    spec = PolicySpec(obs_dim=3, act_dim=2, hidden=(4, 3))
    theta0 = init_theta(spec, seed)
    theta_beh = theta0 + 0.3 * rng.standard_normal(theta0.size)
    theta = theta_beh + 0.1 * rng.standard_normal(theta_beh.size)
    obs = rng.standard_normal((20, spec.obs_dim))
    act = rng.standard_normal((20, spec.act_dim))
    return {"spec": spec, "theta_beh": theta_beh, "theta": theta, "obs": obs, "act": act,
            "logp_beh": log_prob(spec, theta_beh, obs, act),
            "adv_r": rng.standard_normal(20), "adv_c": rng.standard_normal(20) + 0.5,
            "v": rng.standard_normal(theta.size)}


def _policy_surrogates(pb):
    from types import SimpleNamespace

    from metacpo_ref.model.advantages import surrogates

    batch = SimpleNamespace(obs=pb["obs"], act=pb["act"])
    return surrogates(pb["spec"], batch, pb["adv_r"], pb["adv_c"], pb["logp_beh"])


def check_policy_log_prob(tol=1e-6):
    """Jacobian of log_prob (T rows) in theta."""
    from autograd import jacobian

    from metacpo_ref.model.policy import log_prob

    pb = _policy_problem()
    f = lambda t: log_prob(pb["spec"], t, pb["obs"], pb["act"])
    return result("policy_log_prob", rel_error(jacobian(f)(pb["theta"]), central_diff(f, pb["theta"])), tol)


def check_policy_mean_kl(tol=1e-6):
    """Gradient of mean_kl(theta_beh, theta) in theta (theta != theta_beh)."""
    from autograd import grad

    from metacpo_ref.model.policy import mean_kl

    pb = _policy_problem()
    f = lambda t: mean_kl(pb["spec"], pb["theta_beh"], t, pb["obs"])
    return result("policy_mean_kl", rel_error(grad(f)(pb["theta"]), central_diff(f, pb["theta"])), tol)


def check_policy_fvp(tol=1e-6):
    """fvp against central differences of the autograd KL gradient (the Hessian column by column) times v."""
    from autograd import grad

    from metacpo_ref.model.policy import fvp, mean_kl

    pb = _policy_problem()
    spec, theta, obs, v = pb["spec"], pb["theta"], pb["obs"], pb["v"]
    H_fd = central_diff(grad(lambda t: mean_kl(spec, theta, t, obs)), theta)
    return result("policy_fvp", rel_error(fvp(spec, theta, obs, v), H_fd @ v), tol)


def check_policy_surrogate_R(tol=1e-6):
    """Gradient of L_R (eq. 10 surrogate) away from the behaviour parameters."""
    from autograd import grad

    pb = _policy_problem()
    L_R, _ = _policy_surrogates(pb)
    return result("policy_surrogate_R", rel_error(grad(L_R)(pb["theta"]), central_diff(L_R, pb["theta"])), tol)


def check_policy_surrogate_C(tol=1e-6):
    """Gradient of L_C away from the behaviour parameters."""
    from autograd import grad

    pb = _policy_problem()
    _, L_C = _policy_surrogates(pb)
    return result("policy_surrogate_C", rel_error(grad(L_C)(pb["theta"]), central_diff(L_C, pb["theta"])), tol)


def check_policy_surrogate_hvp(tol=1e-6):
    """Second order: autograd Hessian-vector product of L_R against central differences of its gradient along v."""
    import autograd.numpy as anp
    from autograd import grad

    pb = _policy_problem()
    L_R, _ = _policy_surrogates(pb)
    g, theta, v = grad(L_R), pb["theta"], pb["v"]
    hvp = grad(lambda t: anp.dot(g(t), v))(theta)
    fd = central_diff(lambda s: g(theta + s[0] * v), np.zeros(1))[:, 0]
    return result("policy_surrogate_hvp", rel_error(hvp, fd), tol)


def check_policy_value_loss(tol=1e-6):
    """Gradient of the value-function loss that L-BFGS minimises."""
    from autograd import grad

    from metacpo_ref.model.advantages import ValueSpec, init_value, value_loss

    rng = np.random.default_rng(1)
    vspec = ValueSpec(obs_dim=3, hidden=(4, 3))
    params0 = init_value(vspec, 1)
    params = params0 + 0.1 * rng.standard_normal(params0.size)
    obs, targets = rng.standard_normal((20, 3)), rng.standard_normal(20)
    f = lambda p: value_loss(vspec, p, obs, targets)
    return result("policy_value_loss", rel_error(grad(f)(params), central_diff(f, params)), tol)


# --- the discounted cost measure (advantages.py, derivations section 12) -------
DISCOUNTED_EPISODES = ((7, "truncated"), (5, "terminated"), (8, "truncated"))   # 20 steps, as _policy_problem


def discounted_problem(seed=0, gamma=0.9, limit=1.5):
    """:func:`_policy_problem` with an episode structure, per-step costs and the cost
    advantages in the discounted measure's weights (D38); ``b_hat`` from (D37)."""
    from metacpo_ref.model.advantages import center, constraint_value, weight_cost_advantages
    from metacpo_ref.envs.rollouts import Batch

    pb = _policy_problem(seed)
    rng = np.random.default_rng(seed + 1)
    lens = [n for n, _ in DISCOUNTED_EPISODES]
    term = np.concatenate([[False] * (n - 1) + [how == "terminated"] for n, how in DISCOUNTED_EPISODES])
    trunc = np.concatenate([[False] * (n - 1) + [how == "truncated"] for n, how in DISCOUNTED_EPISODES])
    cost = rng.integers(0, 2, len(term)).astype(np.float64)
    z = np.zeros(len(term))
    ep_cost = np.add.reduceat(cost, np.cumsum([0] + lens[:-1]))
    batch = Batch(obs=pb["obs"], act=pb["act"], logp=pb["logp_beh"], rew=z, cost=cost, terminated=term,
                  truncated=trunc, bootstrap_obs=np.zeros_like(pb["obs"]), ep_return=np.zeros(len(lens)),
                  ep_cost=ep_cost, ep_len=np.array(lens))
    raw = center(pb["adv_c"])[0]
    pb.update(batch=batch, gamma=gamma, limit=limit, raw_adv_c=raw,
              adv_c=weight_cost_advantages(raw, batch, "discounted", gamma),
              b_hat=constraint_value(batch, limit, "discounted", gamma))
    return pb


def discounted_by_loop(ep_len, cost, gamma, signal=None):
    """The paper's definitions by plain loops, a reference for (D36)-(D39): ``(J, W, change,
    authors)`` with ``J = (1/E) sum_e sum_tau gamma^tau c``, ``W = (1/E) sum_e sum_tau
    gamma^tau``, ``change = (1/E) sum_e sum_tau gamma^tau signal`` (the discount restarted
    at each episode's first step) and ``authors = sum_i gamma^i c_i`` over the whole batch."""
    signal = np.zeros(len(cost)) if signal is None else signal
    J = W = change = authors = 0.0
    t = 0
    for n in ep_len:
        for tau in range(int(n)):
            J += gamma ** tau * cost[t]
            W += gamma ** tau
            change += gamma ** tau * signal[t]
            authors += gamma ** t * cost[t]
            t += 1
    E = len(ep_len)
    return J / E, W / E, change / E, authors


def check_discounted_constraint_value(tol=1e-6):
    """Gradient of ``b(theta) = b_hat + L_C(theta) - L_C(theta_beh)`` (D17) with the
    discounted measure's cost surrogate (D38) away from the behaviour parameters."""
    from autograd import grad

    pb = discounted_problem()
    _, L_C = _policy_surrogates(pb)
    b = lambda t: pb["b_hat"] + L_C(t) - L_C(pb["theta_beh"])
    return result("discounted_constraint_value", rel_error(grad(b)(pb["theta"]), central_diff(b, pb["theta"])), tol)


def check_discounted_first_order(tol=1e-12):
    """The discounted measure's pieces against a loop over episodes and steps written from
    the paper's definitions: ``b_hat = (J_C - h) / W`` (D37) and ``W (L_C(theta) -
    L_C(theta_beh)) = (1/E) sum_e sum_t gamma^t (rho_t - 1) A_t`` (D39), relative error."""
    from metacpo_ref.model.policy import log_prob

    pb = discounted_problem()
    _, L_C = _policy_surrogates(pb)
    batch, gamma = pb["batch"], pb["gamma"]
    rho = np.exp(log_prob(pb["spec"], pb["theta"], pb["obs"], pb["act"]) - pb["logp_beh"])
    J, W, change, _ = discounted_by_loop(batch.ep_len, batch.cost, gamma, (rho - 1.0) * pb["raw_adv_c"])
    err = max(abs(pb["b_hat"] - (J - pb["limit"]) / W) / abs((J - pb["limit"]) / W),
              abs(W * (L_C(pb["theta"]) - L_C(pb["theta_beh"])) - change) / abs(change))
    return result("discounted_first_order", err, tol)


POLICY_CHECKS = [check_policy_log_prob, check_policy_mean_kl, check_policy_fvp,
                 check_policy_surrogate_R, check_policy_surrogate_C,
                 check_policy_surrogate_hvp, check_policy_value_loss]
COST_MEASURE_CHECKS = [check_discounted_constraint_value, check_discounted_first_order]


# --- checks of the meta-gradient (meta.py, eq. 11) ----------------------------

def step_margin(g, a, b, delta, solve=None):
    """Distance of the eq. 9 instance ``(g, a, b, delta)`` (identity metric, or the metric
    with ``solve: v -> H^{-1} v``) from its nearest case boundary, in the scaled units of
    docs/derivations.md (end of section 8): ``|1 - b^2 / (2 delta s)|`` (feasibility),
    ``|r + lam_t b| / sqrt(q s)`` (cost constraint active or not), ``A / q`` (g parallel to a)."""
    hg, ha = (g, a) if solve is None else (solve(g), solve(a))
    q, r, s = float(g @ hg), float(g @ ha), float(a @ ha)
    if s == 0:
        return np.inf
    margins = [abs(1 - b**2 / (2 * delta * s))] if b > 0 else []
    if b <= 0 or b**2 / s < 2 * delta:
        lam_t = np.sqrt(q / (2 * delta))
        margins += [abs(r + lam_t * b) / np.sqrt(q * s), (q - r**2 / s) / q]
    return float(min(margins))


def meta_problem(seed=3):
    """The seeded synthetic meta-problem of the meta checks: a tiny policy
    (3 -> 4 -> 2), K = 2 local steps, two tasks; its four local steps are
    "trust", "recovery", "both", "both"."""
    from metacpo_ref.config import PAPER, Config
    from metacpo_ref.checks.problems import synthetic_traces
    from metacpo_ref.model.policy import PolicySpec

    config = Config(hidden=(4,), **PAPER)
    spec = PolicySpec(3, 2, (4,))
    theta, traces = synthetic_traces(spec, 2, 2, seed, config, T=48,
                                     b_fracs=[[0.5, 1.5, 0.2], [0.3, 0.6, -0.1]],
                                     betas=[[1.0, 0.8], [0.64, 1.0]])
    return config, spec, theta, traces


def meta_problem_fisher(seed=3):
    """:func:`meta_problem` with Fisher-metric local steps (``inner_metric="fisher"``,
    KL radius ``inner_delta``, damping ``cg_damping``; n = 28, so exact dense solves):
    its four local steps are "trust", "recovery", "both", "both"."""
    from metacpo_ref.config import Config
    from metacpo_ref.checks.problems import synthetic_traces
    from metacpo_ref.model.policy import PolicySpec

    config = Config(hidden=(4,), inner_metric="fisher")
    spec = PolicySpec(3, 2, (4,))
    theta, traces = synthetic_traces(spec, 2, 2, seed, config, T=48,
                                     b_fracs=[[0.5, 1.5, 0.2], [0.3, 0.6, -0.1]],
                                     betas=[[1.0, 0.8], [0.64, 1.0]])
    return config, spec, theta, traces


def meta_step_report(config, spec, theta, traces):
    """The case and the case-boundary margin of every local step along the chain
    (in the chain's metric, ``config.inner_metric``)."""
    from metacpo_ref.step.cpo import solve_step
    from metacpo_ref.model.metric import inner_metric
    from metacpo_ref.algos.step_problem import step_problem

    report, metric = [], inner_metric(config)
    for trace in traces:
        for data in trace.steps:
            g, a, b = step_problem(spec, data.phi, data)
            solve = metric.solver(spec, data.phi, data.obs)
            report.append((solve_step(g, a, b, metric.delta, hinv=solve).case,
                           step_margin(g, a, b, metric.delta, solve)))
    return report


@functools.lru_cache(maxsize=2)
def _meta_numbers(problem):
    """``(dF, dG, J, report)`` of a meta-problem: the analytic gradients, the central-
    difference Jacobian of ``(F, G)`` (computed once for the F and the G check) and the
    step report."""
    from metacpo_ref.algos.meta import meta_gradient, meta_objective

    config, spec, theta, traces = problem()
    _, _, dF, dG = meta_gradient(theta, traces, config)
    J = central_diff(lambda t: np.array(meta_objective(t, traces, config)), theta)
    return dF, dG, J, meta_step_report(config, spec, theta, traces)


def _check_meta_gradient(which, tol, problem=meta_problem, suffix=""):
    dF, dG, J, report = _meta_numbers(problem)
    err = rel_error(dF, J[0]) if which == "F" else rel_error(dG, J[1])
    out = result(f"meta_gradient_{which}{suffix}", err, tol)
    out["detail"] = "steps " + ", ".join(f"{c} (margin {m:.2g})" for c, m in report)
    if min(m for _, m in report) < 1e-3:   # too close to a case boundary for central differences
        out["passed"] = False
    return out


def check_meta_gradient_F(tol=1e-5):
    return _check_meta_gradient("F", tol)


def check_meta_gradient_G(tol=1e-5):
    return _check_meta_gradient("G", tol)


def check_meta_gradient_F_fisher(tol=1e-5):
    """dF of eq. 11 with Fisher-metric local steps (terms through H(phi_k) included)."""
    return _check_meta_gradient("F", tol, meta_problem_fisher, "_fisher")


def check_meta_gradient_G_fisher(tol=1e-5):
    """dG of eq. 11 with Fisher-metric local steps."""
    return _check_meta_gradient("G", tol, meta_problem_fisher, "_fisher")


META_CHECKS = [check_meta_gradient_F, check_meta_gradient_G, check_meta_gradient_F_fisher,
               check_meta_gradient_G_fisher]


# --- checks of the QP layer (qp_layer.py, eqs. 5-7) ---------------------------

def qp_instance(seed=0, n=6, m=5, p=2, k=2, psd=False):
    """A seeded instance ``dict(Q, q, A, b, G, h)`` of eq. 5 with known solution
    ``(z, lam, nu)``: inequalities 0..k-1 active with multipliers in [0.05, 1], the
    others inactive with slack in [0.05, 1] (clear of active-set changes); ``Q`` is
    SPD, or PSD of rank n - 2 (``psd``). ``p = 0`` or ``m = 0`` gives ``None`` data."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, n - 2 if psd else n))
    Q = M @ M.T / n + (0.0 if psd else 0.1) * np.eye(n)
    z, G, A = rng.standard_normal(n), rng.standard_normal((m, n)), rng.standard_normal((p, n))
    lam = np.concatenate([rng.uniform(0.05, 1.0, k), np.zeros(m - k)])
    h = G @ z + np.concatenate([np.zeros(k), rng.uniform(0.05, 1.0, m - k)])
    nu = rng.standard_normal(p)
    data = {"Q": Q, "q": -(Q @ z + G.T @ lam + A.T @ nu), "A": A if p else None,
            "b": A @ z if p else None, "G": G if m else None, "h": h if m else None}
    return data, (z, lam, nu)


def _qp_check(arg, tol=1e-6):
    """Jacobian of qp_layer in ``arg`` (autograd through the KKT VJP) vs central
    differences; ``Q`` enters as ``sym(P)`` so that every perturbation stays symmetric."""

    def check():
        from autograd import jacobian

        from metacpo_ref.step.qp_layer import qp_layer

        data, _ = qp_instance()
        wrap = (lambda P: 0.5 * (P + P.T)) if arg == "Q" else (lambda v: v)
        f = lambda v: qp_layer(**{**data, arg: wrap(v)})
        J_an = np.reshape(jacobian(f)(data[arg]), (data["q"].size, -1))
        return result(f"qp_layer_{arg}", rel_error(J_an, central_diff(f, data[arg])), tol)

    check.__name__ = f"check_qp_layer_{arg}"
    return check


QP_CHECKS = [_qp_check(arg) for arg in ("Q", "q", "A", "b", "G", "h")]


def all_checks():
    """Every check function, in the order they are printed."""
    return CPO_CHECKS + POLICY_CHECKS + COST_MEASURE_CHECKS + META_CHECKS + QP_CHECKS


def run_checks():
    """Run every check; a list of result dicts."""
    return [check() for check in all_checks()]
