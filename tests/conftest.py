import os
from pathlib import Path

import pytest

# Tests never touch the network or the user's cache: caches go to a per-session folder unless the
# caller (scripts/test.sh) chose one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_configure(config):
    if "RTDMD_BENCH_CACHE" not in os.environ:
        import tempfile

        os.environ["RTDMD_BENCH_CACHE"] = tempfile.mkdtemp(prefix="rtdmd-bench-cache-")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not beside this clone")
    return SHARED_DATA
