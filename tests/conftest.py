import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # as metacpo_ref/__init__.py, before numpy loads

import pytest

from metacpo_ref.rollouts import random_act


@pytest.fixture
def rand_act():
    return random_act
