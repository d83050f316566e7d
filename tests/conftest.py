import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastsparse as fs

# Profiles: "dev" (fast, random) and "ci" (derandomized, more examples, no deadline).
# FASTSPARSE_HYPOTHESIS_PROFILE chooses; by default "ci" when the CI variable is set.
settings.register_profile(
    "dev", max_examples=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile(
    "ci", max_examples=80, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# "small": for emulated CPUs (qemu: the no-AVX2 fallback run, the AArch64 chroot), where Python
# runs 10-100x slower; still derandomized, so a failure reproduces.
settings.register_profile(
    "small", max_examples=12, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
# "sanitize": tools/sanitize.sh, where the instrumented build runs several times slower.
settings.register_profile(
    "sanitize", max_examples=15, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("FASTSPARSE_HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "dev"))


def pytest_report_header(config):
    return (f"fastsparse {fs.__version__} from {os.path.dirname(fs.__file__)}; "
            f"ISAs {fs.available_isas()} (active {fs.isa()}); threads {fs.get_num_threads()}")


@pytest.fixture(params=fs.available_isas())
def isa(request):
    """Runs the test once per ISA this CPU supports, with that ISA active."""
    previous = fs.set_isa(request.param)
    yield request.param
    fs.set_isa(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def pytest_terminal_summary(terminalreporter):
    """How many calls the fuzz tests (tests/test_fuzz.py) made, per target."""
    import sys
    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and sum(fuzz.CALLS.values()):
        per = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.CALLS.items()))
        terminalreporter.write_line(f"fastsparse fuzz: {sum(fuzz.CALLS.values())} calls ({per})")
