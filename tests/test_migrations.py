"""The Alembic migrations (DESIGN.md section 4) on SQLite and PostgreSQL.

* ``upgrade head`` on an empty database yields exactly ``statem/schema.py`` (Alembic's own
  ``compare_metadata`` finds no difference);
* every revision downgrades and upgrades again, ``downgrade base`` leaves nothing behind,
  and data survives the round trips;
* the plain ``alembic`` command works from the repository root;
* the wheel carries the migrations, so ``Engine.migrate()`` works from an installed copy.

Each test gets its own empty database: a fresh SQLite file, or a scratch PostgreSQL
database created and dropped around it (the session's shared database is never touched).
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url

import statem.schema
from statem import Engine
from statem.migrate import alembic_config, downgrade, upgrade

ROOT = Path(__file__).resolve().parent.parent
MACHINES = ROOT / "machines"
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("STATEM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

DATA_TABLES = {
    "statem_machines",
    "statem_executions",
    "statem_steps",
    "statem_tasks",
    "statem_services",
    "statem_fanouts",
    "statem_elements",
}
VIEWS = {
    "statem_active",
    "statem_failures",
    "statem_path",
    "statem_counts",
    "statem_pending_work",
    "statem_operations",
    "statem_live_counts",
}
VERSION_TABLE = statem.schema.VERSION_TABLE
COMPARE_OPTS: dict[str, Any] = {
    "compare_type": True,
    "compare_server_default": True,
    "version_table": VERSION_TABLE,
}


def _revisions() -> list[str]:
    """Revision ids from base to head."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


REVISIONS = _revisions()
HEAD = REVISIONS[-1]


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database with no statem tables at all."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    name = f"statem_mig_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.fail(
            f"PostgreSQL is required and could not be reached at {PG_ADMIN_URL}: {exc}", pytrace=False
        )
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _objects(url: str) -> tuple[set[str], set[str]]:
    """(tables, views) of the database."""
    eng = create_engine(url)
    try:
        insp = inspect(eng)
        return set(insp.get_table_names()), set(insp.get_view_names())
    finally:
        eng.dispose()


def _diff(url: str, metadata: MetaData) -> list[Any]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts=COMPARE_OPTS), metadata))
    finally:
        eng.dispose()


def _version(url: str) -> list[str]:
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]
    finally:
        eng.dispose()


def test_revisions_form_one_line() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert script.get_heads() == [HEAD]
    assert REVISIONS[0] == "0001"
    assert len(set(REVISIONS)) == len(REVISIONS)


def test_upgrade_head_matches_schema_exactly(empty_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``alembic upgrade head`` (the command API, its own connection) produces statem/schema.py."""
    monkeypatch.delenv("STATEM_DATABASE_URL", raising=False)
    assert _objects(empty_url) == (set(), set())
    from alembic import command

    command.upgrade(alembic_config(empty_url), "head")
    tables, views = _objects(empty_url)
    assert tables == DATA_TABLES | {VERSION_TABLE}
    assert views == VIEWS
    assert _version(empty_url) == [HEAD]
    assert _diff(empty_url, statem.schema.metadata) == []


def test_compare_metadata_is_not_vacuous(empty_url: str) -> None:
    """The comparison above would see a drift: an extra column and a missing index show up."""
    e = Engine(empty_url)
    e.migrate()
    e.close()
    drifted = MetaData(naming_convention=statem.schema.NAMING)
    for table in statem.schema.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["statem_tasks"].append_column(Column("extra", Integer, nullable=True))
    steps = drifted.tables["statem_steps"]
    steps.indexes.discard(next(ix for ix in steps.indexes if ix.name == "ix_statem_steps_at"))
    kinds = {(d[0], getattr(d[-1], "name", None)) for d in _diff(empty_url, drifted)}
    assert kinds == {("add_column", "extra"), ("remove_index", "ix_statem_steps_at")}


def _save_and_run(e: Engine) -> str:
    """Save the shipped machines, start an order and add an item; return the execution id."""
    e.save_machine(MACHINES / "shipment.yaml")
    e.save_machine(MACHINES / "order.yaml")
    ex = e.start("order", input={"n": 7}, execution_id="roundtrip-1")
    assert (ex.state, ex.status) == ("cart", "waiting")
    ex = e.trigger(ex.id, "add", input={"sku": "A", "qty": 2}, idempotency_key="k1")
    assert ex.context["order"] == {"id": "R7", "line_items": ["A", "A"]}
    return ex.id


def _check_data(e: Engine, eid: str) -> None:
    assert {(m.id, m.version) for m in e.machines()} == {("order", 1), ("shipment", 1)}
    ex = e.get(eid)
    assert (ex.machine_id, ex.machine_version, ex.state, ex.status) == ("order", 1, "cart", "waiting")
    assert ex.input == {"n": 7}
    assert ex.context["order"] == {"id": "R7", "line_items": ["A", "A"]}
    steps = e.history(eid)
    assert [s.seq for s in steps] == list(range(1, len(steps) + 1))
    assert steps[-1].name == "add" and steps[-1].to_state == "cart"
    assert steps[-1].context is not None and steps[-1].context["order"]["line_items"] == ["A", "A"]
    # the repeated idempotency key still finds its step: the unique index came back
    again = e.trigger(eid, "add", input={"sku": "A", "qty": 2}, idempotency_key="k1")
    assert again.context["order"]["line_items"] == ["A", "A"] and again.replayed


def test_downgrade_base_removes_everything_and_upgrade_again_works(empty_url: str) -> None:
    e = Engine(empty_url)
    try:
        e.migrate()
        _save_and_run(e)
        downgrade(e.db, "base")
        tables, views = _objects(empty_url)
        # Alembic keeps its (now empty) version table; every statem table and view is gone
        assert tables == {VERSION_TABLE}
        assert views == set()
        assert _version(empty_url) == []

        e.migrate()
        e.migrate()  # a second upgrade is a no-op
        assert _objects(empty_url) == (DATA_TABLES | {VERSION_TABLE}, VIEWS)
        assert _diff(empty_url, statem.schema.metadata) == []
        assert e.machines() == []
        eid = _save_and_run(e)
        _check_data(e, eid)
    finally:
        e.close()


def test_every_revision_steps_down_and_up_keeping_data(empty_url: str) -> None:
    """The stairway: each revision upgrades, downgrades one step and upgrades again."""
    e = Engine(empty_url)
    try:
        for rev in REVISIONS:
            upgrade(e.db, rev)
            assert _version(empty_url) == [rev]
            downgrade(e.db, "-1")
            assert _version(empty_url) == (
                [REVISIONS[REVISIONS.index(rev) - 1]] if rev != REVISIONS[0] else []
            )
            upgrade(e.db, rev)
        assert _version(empty_url) == [HEAD]
        eid = _save_and_run(e)
        # down to the first revision (views dropped) and back: the rows are untouched
        downgrade(e.db, REVISIONS[0])
        assert _objects(empty_url)[1] == set()
        upgrade(e.db, "head")
        _check_data(e, eid)
        with e.db.connect() as conn:
            counts = conn.execute(
                text("SELECT machine_id, state, status, executions FROM statem_counts")
            ).all()
        assert [tuple(r) for r in counts] == [("order", "cart", "waiting", 1)]
        with e.db.connect() as conn:
            live = conn.execute(
                text("SELECT machine_id, state, status, executions, capped FROM statem_live_counts")
            ).all()
        assert [(*r[:4], bool(r[4])) for r in live] == [("order", "cart", "waiting", 1, False)]
        assert _diff(empty_url, statem.schema.metadata) == []
    finally:
        e.close()


# --------------------------------------------------------------------------- alembic CLI


def test_plain_alembic_cli_from_repo_root(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    url = f"sqlite:///{db}"
    default_db = ROOT / "statem.db"
    default_existed = default_db.exists()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["STATEM_DATABASE_URL"] = url

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "alembic"), "-c", "alembic.ini", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    up = alembic("upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert _objects(url) == (DATA_TABLES | {VERSION_TABLE}, VIEWS)
    assert _version(url) == [HEAD]
    assert _diff(url, statem.schema.metadata) == []
    current = alembic("current")
    assert current.returncode == 0, current.stderr
    assert f"{HEAD} (head)" in current.stdout
    # STATEM_DATABASE_URL wins over alembic.ini's default: no statem.db appeared in the checkout
    assert default_db.exists() == default_existed
    down = alembic("downgrade", "base")
    assert down.returncode == 0, down.stderr
    assert _objects(url) == ({VERSION_TABLE}, set())


# --------------------------------------------------------------------------- the wheel


@pytest.mark.slow
def test_wheel_carries_migrations_and_migrates(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    wheels = list(dist.glob("statem-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        names = set(zf.namelist())
    bundled = ("statem/_migrations/env.py", "statem/_machines/order.yaml", "statem/_machines/shipment.yaml")
    for rel in (
        *bundled,
        "statem/_machines/services/shipping.yaml",
        "statem/_migrations/versions/0004_services.py",
        "statem/py.typed",
    ):
        assert rel in names
    assert not any(n.startswith(("tests/", "migrations/")) or "__pycache__" in n for n in names)

    site = tmp_path / "site"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheels[0])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pip.returncode == 0, pip.stderr
    pkg = site / "statem"
    for rel in sorted(n for n in names if n.startswith("statem/_migrations/")):
        installed = site / rel
        checkout = ROOT / "migrations" / rel.removeprefix("statem/_migrations/")
        assert filecmp.cmp(installed, checkout, shallow=False), rel

    script = """
import json
from pathlib import Path
import statem, statem.migrate
from statem import Engine
from sqlalchemy import inspect
e = Engine('sqlite:///x.db')
e.migrate()
insp = inspect(e.db)
pkg = Path(statem.__file__).parent
e.save_machine(pkg / '_machines' / 'shipment.yaml')
e.save_machine(pkg / '_machines' / 'order.yaml')
ex = e.start('order', input={'n': 3})
print(json.dumps({
    'file': statem.__file__,
    'scripts': str(statem.migrate.script_location()),
    'tables': sorted(insp.get_table_names()),
    'views': sorted(insp.get_view_names()),
    'state': ex.state,
    'order': ex.context['order']['id'],
}))
e.close()
"""
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "STATEM_DATABASE_URL")}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve() == (pkg / "__init__.py").resolve()
    assert not Path(out["file"]).resolve().is_relative_to(ROOT)
    assert Path(out["scripts"]).resolve() == (pkg / "_migrations").resolve()
    assert (pkg / "_migrations" / "versions").is_dir() and (pkg / "_machines").is_dir()
    assert out["tables"] == sorted(DATA_TABLES | {VERSION_TABLE})
    assert out["views"] == sorted(VIEWS)
    assert (out["state"], out["order"]) == ("cart", "R3")
    assert (work / "x.db").is_file()
