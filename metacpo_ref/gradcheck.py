"""Finite-difference checks of every hand-written or autograd derivative.

Each check is a function ``() -> dict(name, max_rel_error, tol, passed)`` on a
small seeded problem; the relative error is ``||an - fd|| / max(||fd||, 1e-12)``
over the whole Jacobian (or VJP). ``python cli.py gradcheck`` runs them all.
"""
import numpy as np


def rel_error(an, fd):
    """Norm-wise relative error ``||an - fd|| / max(||fd||, 1e-12)``."""
    an, fd = np.ravel(an), np.ravel(fd)
    return float(np.linalg.norm(an - fd) / max(np.linalg.norm(fd), 1e-12))


def central_diff(f, p, eps_scale=1e-6):
    """Jacobian of ``f`` at the array ``p`` by central differences, shape (f.size, p.size).

    The step is ``eps_scale * max(1, |p_j|)`` per coordinate (CPO notes, section 5).
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
CPO_CHECKS = []

# --- checks of the policy (policy.py, advantages.py) -------------------------
POLICY_CHECKS = []


def all_checks():
    """Every check function, in the order they are printed."""
    return CPO_CHECKS + POLICY_CHECKS


def run_checks():
    """Run every check; a list of result dicts."""
    return [check() for check in all_checks()]
