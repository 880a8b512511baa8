import os
import sys

# Tests import helpers (tolerances) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
