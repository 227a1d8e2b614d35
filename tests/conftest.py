"""Tests that check a command run in a process of its own (the sparse-training cases and the
examples' smoke tests, each a pytest run of a file of their own, and the benchmark scripts) declare
it with `@pytest.mark.command(args, timeout=..., cwd=...)` and take the fixture `command_output`, a
`subprocess.CompletedProcess` with the command's return code and its stdout and stderr as text.

Such a process keeps one core busy while the suite's own process would only wait for it, so the
selected tests' commands start as soon as collection ends, in the background, one after another in
the order of the tests; those tests run after all the others, and each, when its turn comes, waits
for its command (if still running) and checks what it returned. With a core to spare the commands then add little to the suite's
time; with one core, nothing changes but the order in which the work is done. A command that runs
past its timeout is killed and its test fails."""

import os
import subprocess
import tempfile
import threading

# The suite compiles far more than it runs: XLA:CPU's LLVM backend without its optimisation passes
# compiles ~25% faster and computes the same values (no fast-math either way). Set before JAX starts,
# and inherited by the commands the tests run. Benchmarks are never timed under it.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import pytest

_RUNNER = pytest.StashKey()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "command(args, timeout=600, cwd=None): run `args` in a process of its own, started in the "
        "background after collection; the test takes the result as the `command_output` fixture")


def _run(mark, started=lambda process: None):
    """Run the command of `mark`; its `CompletedProcess`, or `TimeoutExpired` if it was killed."""
    args, timeout = list(mark.args[0]), mark.kwargs.get("timeout", 600)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(args, stdout=out, stderr=err, text=True, cwd=mark.kwargs.get("cwd"))
        started(process)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code is None:
        return subprocess.TimeoutExpired(args, timeout, stdout, stderr)
    return subprocess.CompletedProcess(args, code, stdout, stderr)


class _Background:
    """Runs the commands one at a time on a thread of its own."""

    def __init__(self, items):
        self.commands = [(item.nodeid, item.get_closest_marker("command")) for item in items]
        self.results = {}
        self.finished = {nodeid: threading.Event() for nodeid, _ in self.commands}
        self.stopping = False
        self.process = None
        self.thread = threading.Thread(target=self._run_all, name="background commands", daemon=True)
        self.thread.start()

    def _run_all(self):
        for nodeid, mark in self.commands:
            try:
                if not self.stopping:
                    self.results[nodeid] = _run(mark, self._started)
            except Exception as e:  # reported by the test
                self.results[nodeid] = e
            finally:
                self.finished[nodeid].set()

    def _started(self, process):
        self.process = process
        if self.stopping:  # stop() came while this one was starting
            process.kill()

    def result(self, nodeid):
        self.finished[nodeid].wait()
        return self.results.get(nodeid, RuntimeError("the session stopped before the command ran"))

    def stop(self):
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self.thread.join(timeout=10)


def pytest_collection_modifyitems(config, items):
    """Tests that check a background command run last, so that the suite's own process runs every
    other test meanwhile instead of waiting early for a command that has only just started."""
    items.sort(key=lambda item: item.get_closest_marker("command") is not None)  # stable: order kept


def pytest_collection_finish(session):
    items = [item for item in session.items if item.get_closest_marker("command") is not None]
    xdist_worker = hasattr(session.config, "workerinput")  # runs only some of the items: no head start
    if items and not session.config.option.collectonly and not xdist_worker:
        session.config.stash[_RUNNER] = _Background(items)


def pytest_sessionfinish(session):
    runner = session.config.stash.get(_RUNNER, None)
    if runner is not None:
        runner.stop()


@pytest.fixture
def command_output(request):
    """The finished `@pytest.mark.command` of this test, as a `subprocess.CompletedProcess`."""
    runner = request.config.stash.get(_RUNNER, None)
    if runner is not None and request.node.nodeid in runner.finished:
        result = runner.result(request.node.nodeid)
    else:  # not started in the background (under pytest-xdist, say): run it now
        mark = request.node.get_closest_marker("command")
        if mark is None:
            pytest.fail("command_output needs a @pytest.mark.command(args, ...) on the test")
        result = _run(mark)
    if isinstance(result, subprocess.TimeoutExpired):
        pytest.fail(f"{' '.join(map(str, result.cmd))} ran past {result.timeout} s:\n{(result.output or '')[-6000:]}"
                    f"{(result.stderr or '')[-2000:]}")
    if isinstance(result, BaseException):
        raise result
    return result
