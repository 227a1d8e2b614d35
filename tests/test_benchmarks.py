import pathlib
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.parametrize("script,extra", [("bench_pruning.py", ["--topk", "1000"]), ("bench_ivon.py", [])])
def test_benchmark_scripts_run(script, extra):
    out = subprocess.run(
        [sys.executable, str(BENCH / script), "--layers", "32x2", "--steps", "1", "--reps", "1", *extra],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    ratios = out.stdout.strip().splitlines()[2].split()[-2:]
    assert all(float(r) > 0 for r in ratios)


def test_bench_all_prints_one_table():
    out = subprocess.run(
        [sys.executable, str(BENCH / "bench_all.py"), "--layers", "32x2", "--steps", "1", "--reps", "1", "--topk", "1000"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    rows = dict(line.rsplit(None, 1) for line in out.stdout.splitlines()[2:] if not line.startswith("top-k"))
    assert float(rows["steady / dense: bmr_eqx"]) > 0 and float(rows["IVON / adam: bmr_eqx"]) > 0
    assert rows["steady / dense: JaxPruner"] == "-"  # no source tree given: no JaxPruner column
    assert "top-k over 1,000 scores" in out.stdout
