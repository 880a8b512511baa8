"""pytest-benchmark setup: devices, shared inputs, and which paths this build
can run. Only `pytest benchmarks/` collects this folder; `make test` runs tests/."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The fused results are checked with the tolerances the unit tests use.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))

import pytest  # noqa: E402

from masked_ops import _bench_cases as bc  # noqa: E402

_inputs = {}
_built = {}
_unsupported = {}


def _inputs_for(device):
    if device not in _inputs:
        _inputs[device] = bc.Inputs(bc.PYTEST_CASE, device)
    return _inputs[device]


def _build(device, path):
    """The path's callable, traced or compiled once per session."""
    if (device, path) not in _built:
        _built[(device, path)] = bc.first_call(path, _inputs_for(device))[0]
    return _built[(device, path)]


@pytest.fixture
def inputs_for():
    """inputs_for(device): the case's inputs on `device`, made once per session."""
    return _inputs_for


@pytest.fixture
def build():
    """build(device, path): the path's warmed-up callable on the case's inputs."""
    return _build


def _supported(path, device):
    """Paths this build has no kernel for (e.g. the fused op under XLA without
    its lowering) are left out and listed at the end of the run."""
    try:
        _build(device, path)
    except bc.Unsupported as e:
        _unsupported[(device, path.direction, path.name)] = str(e)
        return False
    return True


def _short(device):
    return device.split("device:")[-1]


def pytest_generate_tests(metafunc):
    if "loss_path" in metafunc.fixturenames:
        params = [
            pytest.param((device, path), id=f"{_short(device)}-{path.direction}-{path.name}")
            for device in bc.devices()
            for path in bc.loss_paths()
            if _supported(path, device)
        ]
        metafunc.parametrize("loss_path", params)
    if "ceiling_path" in metafunc.fixturenames:
        params = [
            pytest.param((device, path), id=f"{_short(device)}-{path.mode}")
            for device in bc.devices()
            for path in bc.ceiling_paths()
        ]
        metafunc.parametrize("ceiling_path", params)


def pytest_report_header(config):
    return [f"masked_ops benchmark case: {bc.PYTEST_CASE.label}"]


def pytest_terminal_summary(terminalreporter):
    for (device, direction, name), why in _unsupported.items():
        terminalreporter.write_line(f"not benchmarked: {device} {direction} {name}: {why}")
