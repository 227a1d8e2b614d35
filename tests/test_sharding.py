"""Pruning on a mesh of 8 simulated CPU devices: `sharded_cases.py`, in a process of its own so the
rest of the suite keeps one device."""

import sys

import pytest
from helpers import TESTS, assert_pytest_passed, pytest_in_own_process


@pytest_in_own_process("sharded_cases.py")
def test_sharded_cases_on_eight_devices_in_their_own_process(command_output):
    assert_pytest_passed(command_output)


@pytest.mark.slow
@pytest_in_own_process("sharded_cases.py", "-m", "slow")
def test_sharded_slow_cases_on_eight_devices_in_their_own_process(command_output):
    assert_pytest_passed(command_output)


@pytest.mark.slow
@pytest.mark.command([sys.executable, str(TESTS.parent / "examples" / "sharded_digits.py"), "--steps", "24"],
                     timeout=600, cwd=TESTS.parent)
def test_sharded_example_trains_on_eight_devices_like_on_one(command_output):
    pytest.importorskip("sklearn")
    assert command_output.returncode == 0, command_output.stderr[-3000:]
    out = command_output.stdout
    assert "8 cpu devices, mesh {'data': 4, 'model': 2}" in out
    assert "masks agree on 100.00% of the weights" in out
    assert "P('model', None) / P('model', None)" in out
