import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"


def bench(script, *extra):
    """`python benchmarks/<script>` on a small model, as a background command (see `conftest.py`)."""
    return pytest.mark.command(
        [sys.executable, str(BENCH / script), "--layers", "32x2", "--steps", "1", "--reps", "1", *extra], timeout=300)


@pytest.mark.parametrize("script", [
    pytest.param("bench_pruning.py", marks=bench("bench_pruning.py", "--topk", "1000")),
    pytest.param("bench_ivon.py", marks=bench("bench_ivon.py")),
])
def test_benchmark_scripts_run(script, command_output):
    out = command_output
    assert out.returncode == 0, out.stderr
    ratios = out.stdout.strip().splitlines()[2].split()[-2:]
    assert all(float(r) > 0 for r in ratios)


@bench("bench_all.py", "--topk", "1000")
def test_bench_all_prints_one_table(command_output):
    out = command_output
    assert out.returncode == 0, out.stderr
    rows = dict(line.rsplit(None, 1) for line in out.stdout.splitlines()[2:] if not line.startswith("top-k"))
    assert float(rows["steady / dense: bmr_eqx"]) > 0 and float(rows["IVON / adam: bmr_eqx"]) > 0
    assert float(rows["dense / dense (this run's noise)"]) > 0
    assert float(rows["steady / dense: bmr_eqx, update between steps"]) > 0
    assert rows["steady / dense: JaxPruner"] == "-"  # no source tree given: no JaxPruner column
    assert "top-k over 1,000 scores" in out.stdout and "host scratch" in out.stdout


@pytest.mark.command([sys.executable, str(BENCH / "bench_export.py"), "--width", "32", "--depth", "2", "--batch", "4",
                      "--reps", "1"], timeout=300)
def test_bench_export_prints_ratios(command_output):
    out = command_output
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["90%", "95%", "99%", "2:4", "1:4"]
    assert all(float(r[-1]) > 0 and float(r[-4]) > 0 for r in rows)


@pytest.mark.command([sys.executable, str(BENCH / "bench_compact.py"), "--channels", "8", "16", "--image", "8",
                      "--batch", "4", "--reps", "1"], timeout=300)
def test_bench_compact_prints_ratios(command_output):
    out = command_output
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["50%", "75%", "90%"]
    assert [r[1] for r in rows] == ["4/8/8", "2/4/4", "1/2/2"]  # every group keeps 1 - sparsity of its channels
    assert all(float(r[-2]) > 0 and float(r[-3]) > 0 and r[-1] == "True" for r in rows)


@pytest.mark.slow
@pytest.mark.command([sys.executable, str(BENCH / "bench_sharded_topk.py"), "--devices", "4", "--width", "64",
                      "--layers", "2", "--reps", "1"], timeout=300)
def test_bench_sharded_topk_masks_agree(command_output):
    out = command_output
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1].split()[-1] == "True"
