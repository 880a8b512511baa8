import os
import sys

from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

# Tests import helpers (tolerances) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Hypothesis profiles of the fuzz suites (tests/test_fuzz*.py): "ci", the
# default, runs a bounded and reproducible set of examples in `make test`;
# `make fuzz` selects "fuzz" (HYPOTHESIS_PROFILE=fuzz), which runs many more
# and keeps failing examples in build/ to replay them first next time.
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    # A failure is shrunk to a minimal example; the explain phase adds little.
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=_SLOW_DATA,
    print_blob=True,
)
settings.register_profile(
    "fuzz",
    max_examples=500,
    deadline=None,
    database=DirectoryBasedExampleDatabase(
        os.path.join(os.path.dirname(__file__), os.pardir, "build", "hypothesis")
    ),
    suppress_health_check=_SLOW_DATA,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
