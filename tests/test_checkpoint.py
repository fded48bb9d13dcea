"""SQLite's background WAL checkpoint (statem.dialects.Checkpointer), on real database files."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from statem import Engine
from statem.dialects import CHECKPOINT_BACKSTOP_PAGES

from .test_engine import counter

NAME = "statem-wal-checkpoint"


def checkpointers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == NAME and t.is_alive())


def wait_until(check: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_writes_reach_the_database_file_without_a_caller_checkpointing(tmp_path: Path) -> None:
    path = tmp_path / "statem.db"
    engine = Engine(f"sqlite:///{path}")
    try:
        engine.migrate()
        with engine.db.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == CHECKPOINT_BACKSTOP_PAGES
        engine.save_machine(counter())
        before = path.stat().st_size
        padding = "x" * 2000
        for _ in range(300):  # about 1.5 MB of history: far below any auto-checkpoint threshold
            ex = engine.start("counter", {"start": 0, "pad": padding})
            engine.trigger(ex.id, "inc", {"by": 1, "pad": padding})
        # only a checkpoint moves pages from the WAL into the database file
        assert wait_until(lambda: path.stat().st_size > before + 1_000_000), (
            f"database file still {path.stat().st_size} bytes"
        )
        assert len(engine.executions(limit=1000)) == 300
    finally:
        engine.close()


def test_close_stops_the_thread_and_use_after_close_restarts_it(tmp_path: Path) -> None:
    running = checkpointers()
    engine = Engine(f"sqlite:///{tmp_path / 'statem.db'}")
    engine.migrate()
    assert checkpointers() == running + 1
    engine.close()
    assert checkpointers() == running
    with engine.db.connect() as conn:  # a disposed engine reconnects, and checkpoints again
        conn.execute(text("SELECT 1"))
    assert checkpointers() == running + 1
    engine.close()
    assert checkpointers() == running


def test_no_thread_for_an_in_memory_database() -> None:
    running = checkpointers()
    engine = Engine("sqlite://")
    try:
        with engine.db.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert checkpointers() == running
    finally:
        engine.close()
