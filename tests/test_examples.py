import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def test_train_digits_runs_and_prunes(tmp_path):
    pytest.importorskip("sklearn")
    import train_digits

    result = train_digits.main(["--steps", "200", "--out", str(tmp_path)])
    assert (tmp_path / "train_digits.png").stat().st_size > 1000
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["dense"] > 0.8 and result["pruned"] > 0.6
