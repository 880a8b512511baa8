"""pytest-benchmark setup: devices, shared inputs per kind of data, and which
paths this build can run. Only `pytest benchmarks/` collects this folder;
`make test` runs tests/."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The fused results are checked with the tolerances the unit tests use.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests"))

import cases as bc  # noqa: E402
import pytest  # noqa: E402

_inputs = {}
_built = {}
_unsupported = {}


def _inputs_for(device, loss):
    key = (device, loss.data)
    if key not in _inputs:
        _inputs[key] = bc.Inputs(bc.PYTEST_CASE, device, loss.data)
    return _inputs[key]


def _build(device, loss, path):
    """The path's callable, traced or compiled once per session. A path this
    build has no kernel for is skipped and listed at the end of the run."""
    key = (device, loss.key, path)
    if key not in _built:
        try:
            _built[key] = bc.first_call(loss, path, _inputs_for(device, loss))[0]
        except bc.Unsupported as e:
            _unsupported[(device, loss.key, path.direction, path.name)] = str(e)
            _built[key] = e
    if isinstance(_built[key], bc.Unsupported):
        pytest.skip(f"no kernel: {_built[key]}")
    return _built[key]


@pytest.fixture
def inputs_for():
    """inputs_for(device, loss): the case's inputs on `device`, made once per session."""
    return _inputs_for


@pytest.fixture
def build():
    """build(device, loss, path): the path's warmed-up callable on the case's inputs."""
    return _build


def _short(device):
    return device.split("device:")[-1]


def pytest_generate_tests(metafunc):
    if "loss_path" in metafunc.fixturenames:
        params = [
            pytest.param(
                (device, loss, path),
                id=f"{_short(device)}-{loss.key}-{path.direction}-{path.name}",
            )
            for device in bc.devices()
            for loss in bc.LOSSES.values()
            for path in bc.loss_paths()
        ]
        metafunc.parametrize("loss_path", params)
    if "baseline_path" in metafunc.fixturenames:
        params = [
            pytest.param(
                (device, loss, path), id=f"{_short(device)}-{loss.key}-{path.impl}-{path.mode}"
            )
            for device in bc.devices()
            for loss in bc.LOSSES.values()
            for path in bc.baseline_paths(loss)
        ]
        metafunc.parametrize("baseline_path", params)


def pytest_report_header(config):
    return [f"masked_ops benchmark case: {bc.PYTEST_CASE.label}, losses {', '.join(bc.LOSSES)}"]


def pytest_terminal_summary(terminalreporter):
    for (device, loss, direction, name), why in _unsupported.items():
        terminalreporter.write_line(f"not benchmarked: {device} {loss} {direction} {name}: {why}")
