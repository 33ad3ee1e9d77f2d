import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import ServerProcess, start_server  # noqa: E402


@pytest.fixture
def server(tmp_path: Path):
    proc: ServerProcess = start_server(tmp_path / "data")
    yield proc
    proc.stop()
