"""Smoke tests of the examples: each runs an example's `main` on a small budget and checks what it
returns and writes.

Run by `test_examples.py` in a process of its own, started in the background when collection ends
(see `conftest.py`): the examples spend their time compiling training steps, which that way happens
on a core the rest of the suite leaves free. Run this file directly with
`pytest tests/example_cases.py` (`-m slow` for the CNN case)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))


def test_train_digits_runs_and_prunes(tmp_path):
    pytest.importorskip("sklearn")
    import train_digits

    result = train_digits.main(["--steps", "200", "--out", str(tmp_path)])
    assert (tmp_path / "train_digits.png").stat().st_size > 1000
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["dense"] > 0.8 and result["pruned"] > 0.6


@pytest.mark.parametrize("arch, targets", [("mlp", (0.95,)), pytest.param("cnn", (0.9, 0.95), marks=pytest.mark.slow)])
def test_bmr_digits_runs_all_methods(tmp_path, arch, targets):
    pytest.importorskip("sklearn")
    import bmr_digits

    summary = bmr_digits.main(["--steps", "120", "--seeds", "1", "--sparsity", *map(str, targets),
                               "--arch", arch, "--eval-every", "30", "--out", str(tmp_path)])
    assert (tmp_path / f"bmr_digits{'_cnn' if arch == 'cnn' else ''}.png").stat().st_size > 1000
    targeted = {"magnitude", "BMR", "global |μ|", "global BMR"}
    assert set(summary) == {("dense IVON", None), ("adaptive BMR", None)} | {
        (name, s) for name in targeted for s in targets}
    assert summary[("dense IVON", None)]["sparsity"][0] == 0.0
    for (name, target), row in summary.items():
        assert 0.0 <= row["ece"][0] <= 1.0 and 0.0 <= row["accuracy"][0] <= 1.0
        if target is not None:
            assert row["sparsity"][0] == pytest.approx(target, abs=2e-3)
    # paired differences: against magnitude, global BMR against global |μ|, none for the baselines
    assert "Δ accuracy" not in summary[("magnitude", 0.95)] and "Δ nll" in summary[("BMR", 0.95)]
    assert bmr_digits.baseline_of("global BMR") == "global |μ|" and bmr_digits.baseline_of("BMR") == "magnitude"
    assert summary[("dense IVON", None)]["accuracy"][0] > 0.3  # chance is 0.1; 120 steps of IVON


def test_teacher_student_reports_recovery():
    import teacher_student

    out = teacher_student.main(["--steps", "300", "--samples", "500"])
    assert set(out) == {"adaptive BMR (no target)", "magnitude @ BMR's sparsity", "magnitude @ true sparsity",
                        "adaptive BMR, refreshed", "BMR @ true sparsity, refr."}
    for row in out.values():
        assert 0.0 <= row["precision"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
    assert out["magnitude @ true sparsity"]["sparsity"] == pytest.approx(0.76, abs=0.05)


def test_bmr_oneshot_study_runs():
    pytest.importorskip("sklearn")
    import bmr_oneshot_study

    results, corr = bmr_oneshot_study.main(["--steps", "60", "--seeds", "1", "--sparsities", "0.9", "--probes", "2"])
    names = {name for name, _ in results}
    assert {"dense", "magnitude", "BMR", "BMR refreshed", "global BMR refreshed floor"} <= names
    assert all(0.0 <= r["accuracy"] <= 1.0 for runs in results.values() for r in runs)
    assert set(corr) == {"ivon", "refreshed"}
    assert all(-1.0 <= v <= 1.0 for rows in corr.values() for row in rows for v in row.values())


def test_sparse_training_runs(tmp_path):
    pytest.importorskip("sklearn")
    import sparse_training

    summary = sparse_training.main(["--steps", "10", "--seeds", "1", "--out", str(tmp_path)])
    assert (tmp_path / "sparse_training.png").stat().st_size > 1000
    assert set(summary) == {"dense", "static sparse", "SET", "RigL", "gradual magnitude", "static sparse (IVON)",
                            "RigL (IVON)", "BMR drop-and-grow (IVON)"}
    assert summary["dense"]["sparsity"][0] == 0.0
    for name, row in summary.items():
        assert 0.0 <= row["accuracy"][0] <= 1.0
        if name != "dense":
            assert row["sparsity"][0] == pytest.approx(0.9, abs=2e-3)  # ERK: 90% over all weights


def test_compact_digits_prunes_compacts_and_reports(capsys):
    import compact_digits

    compact_digits.main(["--steps", "40", "--reps", "2", "--sparsity", "0.75"])
    out = capsys.readouterr().out
    rows = {line[:24].strip(): line[24:].split() for line in out.splitlines()
            if line[:24].strip().startswith(("dense", "magnitude", "BMR", "adaptive"))}
    assert list(rows) == ["dense (IVON)", "magnitude 75%", "BMR 75%", "adaptive BMR (T=2)"]
    assert rows["dense (IVON)"][0] == "32/64"
    # gradual pruning has reached its target by step 24 of 40: a quarter of every group's channels is left
    assert rows["magnitude 75%"][0] == rows["BMR 75%"][0] == "8/16"
    assert all(0 <= float(r[2]) <= 1 and float(r[3]) > 0 for r in rows.values())


def test_oneshot_lm_prunes_with_every_method(tmp_path):
    import oneshot_lm

    results = oneshot_lm.main(["--steps", "20", "--train-chars", "20000", "--eval-chars", "5000", "--calib", "8",
                               "--seq", "16", "--dim", "32", "--layers", "1", "--curve", "0.5", "--out", str(tmp_path)])
    dense = results[("dense", "dense")]
    for method in ("magnitude", "Wanda", "SparseGPT", "Laplace BMR"):
        for setting in (0.5, "2:4", "4:8"):
            assert np.isfinite(results[(method, setting)]) and results[(method, setting)] > 1
    assert 0 <= results["adaptive_sparsity"] < 1 and dense > 1
    assert (tmp_path / "oneshot_lm.png").exists()
