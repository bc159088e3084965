"""The fixture blocks of issue 33 pin the rules a port most often gets wrong: for each rule,
the bug planted in the reference (a monkeypatched function or a wrong input) makes the
block's comparison FAIL, by a margin recorded here (``miss``: the largest relative
difference, ``max|port - stored| / max|stored|``, over the block's outputs)."""
import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

from metacpo_ref.checks import fixtures as fx
from metacpo_ref.checks import fixture_files as ff
from metacpo_ref.algos import line_search, local_step, meta, step_problem
from metacpo_ref.model import metric
from metacpo_ref.step.cpo import CASES

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "tests" / "fixtures"
MANIFEST = json.loads((COMMITTED / ff.MANIFEST).read_text())
COMPUTE = {name: compute for name, _, compute in fx.BLOCKS}
ACCEPTANCE, RECOVERY_SHIFT = line_search.Acceptance, step_problem.recovery_shift      # the reference rules


def stored(name):
    with np.load(COMMITTED / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def inputs(name):
    z = stored(name)
    return {k: z[k] for k in MANIFEST["blocks"][name]["inputs"]}


def judge(name, got):
    """``(passes, miss, off)``: the block's comparison of ``got`` with the stored outputs,
    the largest relative difference (inf: a shape differs) and the outputs that fail."""
    entry, ref = MANIFEST["blocks"][name], stored(name)
    off, miss = [], 0.0
    for k in entry["outputs"]:
        diff, bound, ok = ff.compare(got[k], ref[k], entry["rtol"], entry["atol"])
        if not ok:
            off.append(k)
        scale = float(np.max(np.abs(ref[k].astype(np.float64)), initial=0.0)) or 1.0
        miss = max(miss, diff / scale)
    return not off, miss, off


def assert_pins(name, got, bug="", min_miss=1e-4):
    """The planted bug fails the block, by far more than its tolerance (printed with -s)."""
    passes, miss, off = judge(name, got)
    assert not passes, f"{name}: the planted bug ({bug}) passes"
    assert miss > min_miss, (name, bug, miss, off)
    print(f"\nMISS {name} | {bug} | {miss:.3g} | {', '.join(off)}")
    return miss, off


@contextlib.contextmanager
def patched(module, attr, value):
    original = getattr(module, attr)
    setattr(module, attr, value)
    try:
        yield
    finally:
        setattr(module, attr, original)


def test_reference_passes_every_new_block():
    for name in ("meta_gradient_recover", "meta_gradient_fisher_recover", "outer_step_recover"):
        passes, miss, off = judge(name, COMPUTE[name](inputs(name)))
        assert passes, (name, off)


# --- the recover rule (D34) in the production path ---------------------------------

@pytest.mark.parametrize("name", ["meta_gradient_recover", "meta_gradient_fisher_recover"])
def test_meta_gradient_recover_pins_the_recorded_shifts(name):
    """A port that drops the recorded b_shift (replays the chain with the rule off) fails."""
    inp = inputs(name)
    assert sum(float(inp[k]) > 0 for k in inp if k.endswith("_b_shift")) == 3
    off = {k: (np.zeros_like(v) if k.endswith("_b_shift") else v) for k, v in inp.items()}
    miss, bad = assert_pins(name, COMPUTE[name](off), "recorded b_shift dropped (rule off)")
    assert {"dF", "dG", "F", "G"} <= set(bad)
    # ... and the rule-off block of the same chain is the one whose description says so
    assert "recover rule off" in MANIFEST["blocks"][name.replace("_recover", "")]["description"]


def test_outer_step_recover_pins_the_rule_and_its_factor_2():
    name = "outer_step_recover"
    inp = inputs(name)
    z = stored(name)
    assert float(z["G"]) > 0 and CASES[int(z["case_index"])] == "recovery"
    # the rule off
    miss, bad = assert_pins(name, COMPUTE[name]({**inp, "recover_above_limit": np.array(0)}), "rule off")
    assert "case_index" in bad and "theta_new" in bad

    # D34 without its factor 2: c = sqrt(2 delta s) - b_hat
    def half_shift(b_hat, a, solve, delta, config):
        c = RECOVERY_SHIFT(b_hat, a, solve, delta, config)
        return c if c == 0.0 else c - float(np.sqrt(2.0 * delta * float(a @ a)))

    with patched(local_step, "recovery_shift", half_shift), patched(fx, "recovery_shift", half_shift):
        miss, bad = assert_pins(name, COMPUTE[name](inp), "D34 shift without its factor 2")
    assert "b_shift" in bad


def test_outer_step_recover_pins_the_kl_batches_and_the_radii():
    """The outer line search measures the KL from theta on the pre-adaptation batches
    (each task's step-0 batch) with the bound ls_kl; any other batch choice or radius fails."""
    name = "outer_step_recover"
    inp = inputs(name)
    assert_kl_batches_pinned(name, inp)
    for a, b in (("ls_kl", "outer_delta"), ("ls_kl", "inner_delta"), ("outer_delta", "inner_delta")):
        assert float(inp[a]) != float(inp[b])
        assert_pins(name, COMPUTE[name]({**inp, a: inp[b], b: inp[a]}), f"{a} and {b} swapped")


# --- the line search's decisions (D18, D19) -------------------------------------------

LOCAL = ["line_search_local_full", "line_search_local_kl", "line_search_local_cost", "line_search_local_reward"]

OUTER = ["outer_step_recover", "line_search_outer_full", "line_search_outer_cost", "line_search_outer_reward"]


def assert_kl_batches_pinned(name, inp):
    """The outer line search's KL measured on any other batches than the pre-adaptation
    ones (:func:`kl_choices`) fails block ``name`` in its tried KLs."""
    for what, obs in kl_choices(inp).items():
        wrong = lambda spec, old, new, _obs, obs=obs: fx.mean_kl(spec, old, new, obs)
        with patched(meta, "mean_kl", wrong):
            miss, bad = assert_pins(name, COMPUTE[name](inp), f"outer KL on the {what}")
        assert "tried_kl" in bad, what


def kl_choices(inp):
    """Batch choices for the outer line search's KL other than the pre-adaptation batches."""
    tasks = range(int(inp["n_tasks"]))
    return {
        "evaluation batches": np.concatenate([inp[f"task{i}_eval_obs"] for i in tasks]),
        "last local batches": np.concatenate([inp[f"task{i}_step1_obs"] for i in tasks]),
        "every batch": np.concatenate([inp[f"task{i}_{w}_obs"] for i in tasks for w in ("step0", "step1", "eval")]),
        "first task's pre-adaptation batch": inp["task0_step0_obs"],
    }




def wrong_acceptance(b_sign=1.0, reward_rule=True):
    """Acceptance with a planted bug: the cost allowance max(b, 0) (b_sign = -1), or no reward rule."""
    def make(R0, C0, b, kl_bound, recovery, constrained):
        return ACCEPTANCE(R0, C0, b_sign * b, kl_bound, recovery or not reward_rule, constrained)
    return make


def off_by_one(evaluate, accepts, decay, max_steps):
    """Backtracking from decay^1 instead of decay^0."""
    for j in range(1, int(max_steps) + 1):
        cand = evaluate(float(decay) ** j)
        if accepts(cand):
            return cand
    return None


def assert_records_its_decision(name):
    """A line-search block reproduces, tried fractions decay^j from j = 0, the last one
    accepted, the case its name says decided by its rule alone (``full``: beta = 1
    accepted), and four distinct radii."""
    z = stored(name)
    assert judge(name, COMPUTE[name](inputs(name)))[0]
    rk, rr, rc = z["rejected_kl"], z["rejected_reward"], z["rejected_cost"]
    np.testing.assert_allclose(z["tried_beta"], 0.8 ** np.arange(len(rk)), rtol=1e-15)
    assert float(z["beta"]) == z["tried_beta"][-1] and not (rk[-1] or rr[-1] or rc[-1])
    case = name.rsplit("_", 1)[1]
    alone = {"kl": rk & ~rr & ~rc, "reward": rr & ~rk & ~rc, "cost": rc & ~rk & ~rr}
    assert len(rk) == 1 if case == "full" else np.any(alone[case])
    assert len({float(z[k]) for k in ("inner_delta", "outer_delta", "ls_kl", "baseline_delta")}) == 4


@pytest.mark.parametrize("name", LOCAL)
def test_local_line_search_blocks_record_their_decision(name):
    assert_records_its_decision(name)


@pytest.mark.parametrize("name", LOCAL)
def test_local_radii_are_pinned(name):
    """The KL bound is ls_kl and the radius inner_delta: a port reading any other radius fails."""
    inp = inputs(name)
    for right in ("inner_delta", "ls_kl"):
        for wrong in ("inner_delta", "outer_delta", "ls_kl", "baseline_delta"):
            if wrong != right:
                assert_pins(name, COMPUTE[name]({**inp, right: inp[wrong]}), f"{right} read as {wrong}")


@pytest.mark.parametrize("name", ["line_search_local_full", "line_search_local_kl"])
def test_local_recover_rule_is_pinned(name):
    inp = inputs(name)
    assert float(inp["b_hat"]) > 0 and float(stored(name)["b_shift"]) > 0
    miss, bad = assert_pins(name, COMPUTE[name]({**inp, "recover_above_limit": np.array(0)}), "rule off")
    assert "case_index" in bad

    def half_shift(b_hat, a, solve, delta, config):
        c = RECOVERY_SHIFT(b_hat, a, solve, delta, config)
        return c if c == 0.0 else c - float(np.sqrt(2.0 * delta * float(a @ a)))

    with patched(local_step, "recovery_shift", half_shift):
        miss, bad = assert_pins(name, COMPUTE[name](inp), "D34 shift without its factor 2")
    assert "b_shift" in bad


@pytest.mark.parametrize("name", OUTER[1:])
def test_outer_line_search_blocks_record_their_decision(name):
    assert_records_its_decision(name)


# The rules the local and outer line searches share (both run local_step.cpo_step), planted in each.
RULE_BLOCKS = [(local_step, "line_search_local"), (local_step, "line_search_outer")]


@pytest.mark.parametrize("module,prefix", RULE_BLOCKS)
def test_cost_rule_sign_is_pinned(module, prefix):
    """dC <= max(b, 0) instead of max(-b, 0) (outer: dG <= max(G, 0)): the allowed slack
    becomes 0 below the limit."""
    name = prefix + "_cost"
    with patched(module, "Acceptance", wrong_acceptance(b_sign=-1.0)):
        miss, bad = assert_pins(name, COMPUTE[name](inputs(name)), "cost rule dC <= max(b, 0)")
    assert "beta" in bad and "rejected_cost" in bad


@pytest.mark.parametrize("module,prefix", RULE_BLOCKS)
def test_reward_rule_is_pinned(module, prefix):
    name = prefix + "_reward"
    with patched(module, "Acceptance", wrong_acceptance(reward_rule=False)):
        miss, bad = assert_pins(name, COMPUTE[name](inputs(name)), "no reward rule")
    assert "beta" in bad and "rejected_reward" in bad


@pytest.mark.parametrize("module,name", [(local_step, n) for n in LOCAL + OUTER])
def test_fractions_off_by_one_are_pinned(module, name):
    with patched(module, "backtrack", off_by_one):
        miss, bad = assert_pins(name, COMPUTE[name](inputs(name)), "fractions decay^(j+1)")
    assert "tried_beta" in bad


@pytest.mark.parametrize("name", OUTER[1:])
def test_outer_kl_batches_and_radii_are_pinned(name):
    inp = inputs(name)
    assert_kl_batches_pinned(name, inp)
    for right in ("outer_delta", "ls_kl"):
        for wrong in ("inner_delta", "outer_delta", "ls_kl", "baseline_delta"):
            if wrong != right:
                assert_pins(name, COMPUTE[name]({**inp, right: inp[wrong]}), f"{right} read as {wrong}")


# --- an asymmetric stored metric: the method uses sym(H) --------------------------------

def lu_solver(H=None, hinv=None):
    """No symmetrisation: H^{-1} v of the stored H itself."""
    return lambda v: np.linalg.solve(H, v)


def upper_cholesky_solver(H=None, hinv=None):
    """No symmetrisation: a Cholesky factor read from H's upper triangle (LAPACK's convention)."""
    import scipy.linalg

    factor = scipy.linalg.cho_factor(H)
    return lambda v: scipy.linalg.cho_solve(factor, v)


@pytest.mark.parametrize("name", ["solve_step_both_dense_asym", "cpo_layer_both_dense_asym"])
@pytest.mark.parametrize("solver", [lu_solver, upper_cholesky_solver])
def test_asymmetric_metric_pins_the_symmetrisation(name, solver):
    from metacpo_ref.step import cpo
    from metacpo_ref.step import dco

    inp = inputs(name)
    assert judge(name, COMPUTE[name](inp))[0]
    assert not np.allclose(inp["H"], inp["H"].T)
    with patched(cpo, "metric_solver", solver), patched(dco, "metric_solver", solver):
        try:
            got = COMPUTE[name](inp)
        except np.linalg.LinAlgError:    # that triangle's matrix is not even positive definite
            print(f"\nMISS {name} | no sym(H): {solver.__name__} | raises LinAlgError")
            return
        miss, bad = assert_pins(name, got, f"no sym(H): {solver.__name__}")
    assert "x" in bad
    # the symmetric blocks cannot see it: there sym(H) = H
    sym = name.replace("_asym", "")
    with patched(cpo, "metric_solver", solver), patched(dco, "metric_solver", solver):
        assert judge(sym, COMPUTE[sym](inputs(sym)))[0]


def test_asymmetric_metric_pins_the_symmetric_hbar():
    from metacpo_ref.step import dco

    name = "cpo_layer_both_dense_asym"
    with patched(dco, "_sym", lambda M: M):
        miss, bad = assert_pins(name, COMPUTE[name](inputs(name)), "Hbar not symmetrised")
    assert bad == ["Hbar"]


# --- the CPO baseline's Fisher step, constraint binding, truncated CG --------------------

def test_policy_update_fisher_both_binds_and_pins_its_cg():
    from metacpo_ref.step.cpo import cg
    from metacpo_ref.model.fisher_solve import fisher_matrix
    from metacpo_ref.model.policy import fisher_product

    name = "policy_update_fisher_both"
    inp, z = inputs(name), stored(name)
    assert judge(name, COMPUTE[name](inp))[0]
    assert CASES[int(z["case_index"])] == "both" and float(z["nu"]) > 0
    assert int(inp["cg_iters"]) < len(inp["phi"])              # truncated: the recurrence matters
    spec = fx._spec(inp)

    def exact(spec, theta, obs, damping, iters):
        H = fisher_matrix(spec, theta, obs, damping)
        return lambda v: np.linalg.solve(H, v)

    def one_fewer(spec, theta, obs, damping, iters):
        product = fisher_product(spec, np.asarray(theta, dtype=np.float64), obs, damping)
        return lambda v: cg(product, v, iters - 1, 1e-10)

    for hinv, bug in ((exact, "exact H^-1 instead of CG"), (one_fewer, "CG with cg_iters - 1 iterations")):
        with patched(metric, "fisher_cg_solver", hinv):
            miss, bad = assert_pins(name, COMPUTE[name](inp), bug)
        assert "phi_new" in bad and "hinv_a" in bad
    for wrong in ("inner_delta", "outer_delta", "ls_kl"):
        assert_pins(name, COMPUTE[name]({**inp, "baseline_delta": inp[wrong]}), f"baseline_delta read as {wrong}")
    assert spec.sizes == (5, 8, 6, 2)
