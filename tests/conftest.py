import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as metacpo_ref/__init__.py, before numpy loads

import numpy as np
import pytest
import scipy.linalg

from metacpo_ref.envs.rollouts import random_act


# --- helpers shared by test modules (import them from tests.conftest) --------


def random_spd(rng, n):
    """A random symmetric positive definite (n, n) matrix, eigenvalues >= 0.1."""
    M = rng.normal(size=(n, n))
    return M @ M.T / n + 0.1 * np.eye(n)


def hinv_of(H):
    """``v -> H^{-1} v`` by a Cholesky factor of the SPD ``H``."""
    factor = scipy.linalg.cho_factor(H)
    return lambda v: scipy.linalg.cho_solve(factor, v)


@pytest.fixture
def rand_act():
    return random_act
