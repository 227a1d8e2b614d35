"""Runs the examples' smoke tests, `example_cases.py`, in a process of its own, started in the
background when collection ends (see `conftest.py`), so that their compilations overlap the rest
of the suite. A failure shows the failing cases' output."""

import pytest
from helpers import assert_pytest_passed, pytest_in_own_process


@pytest_in_own_process("example_cases.py")
def test_examples_in_their_own_process(command_output):
    assert_pytest_passed(command_output)


@pytest.mark.slow
@pytest_in_own_process("example_cases.py", "-m", "slow")
def test_slow_examples_in_their_own_process(command_output):
    assert_pytest_passed(command_output)
