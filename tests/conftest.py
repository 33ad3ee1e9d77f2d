import itertools
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from servers import ServerProcess, start_server  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Browser tests last: Playwright's sync API keeps an event loop running in the main
    thread for the rest of the session, where ``asyncio.run`` (the in-process engine tests,
    the simulator) then refuses to start."""
    items.sort(key=lambda item: "tests/browser/" in item.nodeid or item.nodeid.startswith("browser/"))


@pytest.fixture
def server(tmp_path: Path):
    proc: ServerProcess = start_server(tmp_path / "data")
    yield proc
    proc.stop()


# -- real Redis, PostgreSQL and nginx on loopback (tests/services.py) --------------------


def _service(start):
    from services import Missing

    try:
        return start()
    except Missing as exc:
        if os.geteuid() != 0:
            pytest.skip(f"{exc}; not root, so set-up could not install it")
        raise


@pytest.fixture
def redis_server():
    from services import Redis

    service = _service(Redis.start)
    yield service
    service.stop()


@pytest.fixture
def postgres_server():
    from services import Postgres

    service = _service(Postgres.start)
    yield service
    service.stop()


@pytest.fixture
def nginx_proxy():
    """Starts nginx with the deploy configuration in front of the given members."""
    from services import Nginx

    started = []

    def start(members: list[str]) -> Nginx:
        started.append(_service(lambda: Nginx.start(members)))
        return started[-1]

    yield start
    for service in started:
        service.stop()


# -- the store on each of its backends -------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster():
    """One PostgreSQL for the session's store tests; ``store_target`` gives each test its own database."""
    from services import Postgres

    service = _service(Postgres.start)
    yield service
    service.stop()


@pytest.fixture
def postgres_database(request):
    """An empty PostgreSQL database of this test's own, on the session's cluster."""
    import psycopg

    from webfl.server.storage import PostgresURL

    cluster = request.getfixturevalue("postgres_cluster")
    name = f"t{os.getpid()}_{next(_databases)}"
    with psycopg.connect(cluster.url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return PostgresURL(cluster.url.rpartition("/")[0] + "/" + name)


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request, tmp_path: Path):
    """Where a ``Store`` keeps its data, on each backend: the data folder's SQLite file, or
    an empty PostgreSQL database."""
    if request.param == "sqlite":
        return tmp_path / "webfl.sqlite3"
    return request.getfixturevalue("postgres_database")
