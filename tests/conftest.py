"""Fixtures: an engine on a fresh SQLite file and on the real PostgreSQL server.

PostgreSQL is not optional: when ``STATEM_TEST_PG_URL`` cannot be reached the PostgreSQL
half of the suite FAILS with a message saying so (``make test`` starts the local server).
One database per test session is migrated once; each test starts from empty tables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from statem import Engine

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "machines"
PG_ADMIN_URL = os.environ.get("STATEM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLES = ("statem_tasks", "statem_steps", "statem_executions", "statem_machines", "statem_services")


def _pg_unavailable(exc: Exception) -> str:
    return (
        f"PostgreSQL is required for the test suite and could not be reached at {PG_ADMIN_URL}: "
        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}. "
        "Run `make test` (it starts the local cluster) or set STATEM_TEST_PG_URL."
    )


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database for this session, migrated to head, dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"statem_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        pytest.fail(_pg_unavailable(exc), pytrace=False)
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = Engine(url)
    engine.migrate()
    engine.close()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(url: str) -> None:
    eng = create_engine(url)
    with eng.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'statem.db'}"
        e = Engine(url)
        e.migrate()
        e.close()
        return url
    url = request.getfixturevalue("pg_url")
    _truncate(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a fresh database (both dialects)."""
    e = Engine(db_url, env={"shipping_url": "http://127.0.0.1:9/unused"})
    yield e
    e.close()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """An engine on a fresh SQLite file only (for dialect-independent unit tests)."""
    e = Engine(f"sqlite:///{tmp_path / 'statem.db'}")
    e.migrate()
    yield e
    e.close()
