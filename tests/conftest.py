import os
import sys

# Tests import the top-level scripts (model.py, rollout.py, ...) from the repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

# Tests of the engine's device-dependent paths run on CPU everywhere and again on CUDA where there
# is a GPU (skipped, and so visible as skipped, where there is none).
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device"))]
