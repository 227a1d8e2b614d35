"""Runs `sparse_training_cases.py` (SET, RigL, STE, static sparse, Bayesian drop-and-grow) in a
process of its own, started in the background when collection ends (see `conftest.py`); see that
file's docstring for why."""

import pytest
from helpers import assert_pytest_passed, pytest_in_own_process


@pytest_in_own_process("sparse_training_cases.py")
def test_sparse_training_cases_in_their_own_process(command_output):
    assert_pytest_passed(command_output)


@pytest.mark.slow
@pytest_in_own_process("sparse_training_cases.py", "-m", "slow")
def test_sparse_training_slow_cases_in_their_own_process(command_output):
    assert_pytest_passed(command_output)
