"Shared fixtures: where the real assets from the original project live, and small-model helpers."
from pathlib import Path
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"
ASSETS = SHARED / "assets"

@pytest.fixture(scope="session")
def assets() -> Path:
    "The folder of real inputs from the original project (`../shared/assets`); skips where a clone has none."
    if not ASSETS.is_dir(): pytest.skip(f"{ASSETS} is absent (a user's clone): tests on the original project's assets are skipped")
    return ASSETS
