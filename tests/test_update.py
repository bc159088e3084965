"""The one line search (D18, D19) shared by every update and the outer step."""
import dataclasses

from metacpo_ref.update import Acceptance, Candidate, backtrack


def rule(**change):
    return Acceptance(**{"R0": 1.0, "C0": 2.0, "b": -0.5, "kl_bound": 0.01, "recovery": False,
                         "constrained": True, **change})


def test_acceptance_rule_each_condition():
    ok = Candidate(1.0, 0.005, 1.1, 2.4)            # KL inside, reward up, cost up by 0.4 <= -b
    assert rule()(ok)
    assert not rule()(dataclasses.replace(ok, kl=0.02))                 # KL bound
    assert not rule()(dataclasses.replace(ok, R=1.0))                   # no reward improvement
    assert rule(recovery=True)(dataclasses.replace(ok, R=0.5))          # ... unless recovering
    assert not rule()(dataclasses.replace(ok, C=2.6))                   # cost up by more than -b
    assert rule(constrained=False)(dataclasses.replace(ok, C=2.6))      # TRPO: no cost rule
    assert not rule(b=0.3)(dataclasses.replace(ok, C=2.1))              # infeasible: cost may not rise
    assert rule(b=0.3)(dataclasses.replace(ok, C=1.9))


def test_backtrack_returns_what_it_accepted():
    seen = []

    def evaluate(beta):
        seen.append(beta)
        return Candidate(beta, kl=beta, R=2.0, C=0.0)

    found = backtrack(evaluate, rule(kl_bound=0.5), 0.5, 15)
    assert found == Candidate(0.5, 0.5, 2.0, 0.0) and seen == [1.0, 0.5]
    assert backtrack(evaluate, rule(kl_bound=1e-9), 0.5, 4) is None and seen[2:] == [1.0, 0.5, 0.25, 0.125]
