"""Runs `sparse_training_cases.py` (SET, RigL, STE, static sparse, Bayesian drop-and-grow) in a
process of its own; see that file's docstring for why."""

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent


def test_sparse_training_cases_in_their_own_process():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "sparse_training_cases.py")],
        capture_output=True, text=True, timeout=1200, cwd=HERE.parent,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.strip().splitlines()[-1]
