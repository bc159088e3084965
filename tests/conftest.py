import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as metacpo_ref/__init__.py, before numpy loads

import numpy as np
import pytest


def random_act(obs, rng):
    """A uniformly random policy in the act(obs, rng) -> (action, logp) form."""
    return rng.uniform(-1.0, 1.0, 2), float(np.log(0.25))


@pytest.fixture
def rand_act():
    return random_act
