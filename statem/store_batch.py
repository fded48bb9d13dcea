"""The set-based SQL of a batch of steps: many executions' steps in one transaction.

A worker that has many due timers or many effect results at once writes them as one
transaction of a few statements instead of one transaction of five or six statements per
step (:mod:`statem.batch` decides what goes in a batch; :func:`statem.steps.commit_many`
is the step writer). Every statement here is per-row fenced, so one stale step never
spoils the others:

* :func:`lock_executions` -- one ``SELECT ... FOR NO KEY UPDATE`` of every execution of the
  batch, in id order (the order every writer locks in, so batches do not deadlock);
* :func:`take_claimed` -- one ``DELETE ... RETURNING`` of the armed tasks of the
  executions whose task in the batch is still claimed under our claim (a task reclaimed
  by another worker fences its execution out: nothing of it is deleted);
* :func:`write_executions` -- the fenced execution ``UPDATE`` of every step, each row
  fenced by its version;
* :func:`insert_history` / :func:`insert_pending` -- the history rows and armed tasks of
  every step.

On PostgreSQL each of the last three is ONE statement whatever the batch's size: the rows
travel as one JSON array, unpacked by ``json_to_recordset`` / ``json_populate_recordset``
on the server (the form :func:`statem.store.record_step` uses for one step's history). On
SQLite, in-process, they are ``executemany`` calls (a loop in C) run straight on the driver
(:mod:`statem.fastsql`: SQLAlchemy's per-row parameter handling cost more than SQLite's
work).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    JSON,
    Connection,
    Row,
    Text,
    any_,
    bindparam,
    cast,
    func,
    insert,
    literal_column,
    select,
    text,
)

from . import dialects, jsoncodec
from .errors import ConcurrencyError
from .fastsql import Prepared
from .schema import executions, steps, tasks
from .semantics import StepRecord, TaskSpec
from .store import _FAST_INSERT_STEPS, _FAST_WRITE_STEP, _INSERT_PENDING, INBOX_KINDS, _step_rows, _task_rows


def lock_executions(conn: Connection, ids: Sequence[str]) -> dict[str, Row[Any]]:
    """The execution rows of ``ids``, locked until the transaction ends, in id order
    (missing ids are absent). SQLite's writing transaction already holds its write lock."""
    if dialects.is_sqlite(conn):
        return {row.id: row for row in _LITE_LOCK.all(conn, {"p_ids": jsoncodec.dumps(list(ids))})}
    return {row.id: row for row in conn.execute(_PG_LOCK, {"p_ids": sorted(ids)}).all()}


def take_claimed(conn: Connection, claims: Sequence[tuple[int, str]]) -> dict[str, list[Row[Any]]]:
    """Delete every armed task (the inbox kinds aside) of each execution whose task in
    ``claims`` (task id, claim token) is still claimed under that token; returns the
    deleted rows by execution id. An execution whose task was reclaimed or discarded is
    left untouched, and absent from the result."""
    if not claims:
        return {}
    if dialects.is_sqlite(conn):
        rows = _LITE_TAKE.all(conn, {"p_claims": jsoncodec.dumps(list(claims))})
    else:
        ids, tokens = [task_id for task_id, _ in claims], [token for _, token in claims]
        rows = list(conn.execute(_PG_TAKE, {"p_ids": ids, "p_claims": tokens}).all())
    taken: dict[str, list[Row[Any]]] = defaultdict(list)
    for row in rows:
        taken[row.execution_id].append(row)
    return taken


# SQLite: the ids travel as one JSON array unpacked by json_each, so the statement's text
# is the same whatever the batch's size, compiled once and run on the driver
# (statem.fastsql); an expanding IN is rendered anew by SQLAlchemy for every batch.
_LITE_LOCK = Prepared(
    text(
        "SELECT * FROM statem_executions WHERE id IN (SELECT value FROM json_each(:p_ids)) ORDER BY id"
    ).columns(*executions.c)
)
_LITE_TAKE = Prepared(
    text(
        "DELETE FROM statem_tasks WHERE kind NOT IN ('trigger', 'drain') AND execution_id IN ("
        " SELECT t.execution_id FROM json_each(:p_claims) AS c"
        " JOIN statem_tasks AS t ON t.id = json_extract(c.value, '$[0]')"
        " WHERE t.claim = json_extract(c.value, '$[1]') AND t.status = 'claimed')"
        " RETURNING *"
    ).columns(*tasks.c)
)


# PostgreSQL: the ids travel as arrays, so each statement's text is the same whatever the
# batch's size (prepared once per connection; an expanding IN is new SQL per size).
_PG_LOCK = (
    select(executions)
    .where(executions.c.id == any_(bindparam("p_ids", type_=ARRAY(executions.c.id.type))))
    .order_by(executions.c.id)
    .with_for_update(key_share=True)
)
_PG_TAKE = text(
    "DELETE FROM statem_tasks WHERE kind NOT IN ('trigger', 'drain') AND execution_id IN ("
    " SELECT t.execution_id FROM unnest(CAST(:p_ids AS bigint[]), CAST(:p_claims AS text[])) AS c(id, claim)"
    # each task by its primary key: OFFSET 0 keeps the planner from folding the status
    # test into the scan, where stale statistics ("no task is claimed") once made it read
    # every claimed task once per task of the batch
    " CROSS JOIN LATERAL (SELECT execution_id, claim, status FROM statem_tasks WHERE id = c.id OFFSET 0) AS t"
    " WHERE t.claim = c.claim AND t.status = 'claimed')"
    " RETURNING *"
).columns(*tasks.c)
assert set(INBOX_KINDS) == {"trigger", "drain"}  # spelled out in _PG_TAKE


def write_executions(conn: Connection, writes: Sequence[dict[str, Any]]) -> None:
    """Write back each execution after its step, fenced by its version (``p_id``,
    ``p_version`` and the new values, as :func:`statem.store.step_params` makes them).
    Raises ConcurrencyError if any row's fence failed (the caller holds their locks, so
    that is a bug, and the whole batch rolls back)."""
    if not writes:
        return
    if dialects.is_sqlite(conn):
        matched = _FAST_WRITE_STEP.execute(conn, list(writes))
    else:
        rows = [_pg_execution(w) for w in writes]
        params = {"p_rows": jsoncodec.dumps(rows), "p_ids": [w["p_id"] for w in writes]}
        matched = conn.execute(_PG_WRITE_EXECUTIONS, params).rowcount
    if matched != len(writes):
        raise ConcurrencyError(f"{len(writes) - matched} of {len(writes)} executions in a batch moved")


def _pg_execution(w: dict[str, Any]) -> dict[str, Any]:
    # context and output travel as JSON text and are cast back, so a None output is stored
    # as the JSON null the one-step path stores (SQLAlchemy's JSON type), not as SQL NULL
    return {
        "id": w["p_id"], "version": w["p_version"], "state": w["p_state"], "status": w["p_status"],
        "context": jsoncodec.dumps(w["p_context"]), "output": jsoncodec.dumps(w["p_output"]),
        "error": w["p_error"],
        "seq": w["p_seq"], "armed": w["p_armed"], "updated_at": w["p_now"].isoformat(),
    }  # fmt: skip


_PG_WRITE_EXECUTIONS = text(
    "UPDATE statem_executions AS e SET version = e.version + 1, state = v.state, status = v.status, "
    "context = CAST(v.context AS json), output = CAST(v.output AS json), error = v.error, seq = v.seq, "
    "armed = v.armed, updated_at = v.updated_at "
    "FROM json_to_recordset(CAST(:p_rows AS json)) AS v(id text, version integer, state text, "
    "status text, context text, output text, error text, seq integer, armed boolean, updated_at timestamptz) "
    # the ids again as an array: an index condition on the primary key whatever the
    # planner guesses of the JSON (else a small table's stale statistics plan a seq scan)
    "WHERE e.id = ANY(CAST(:p_ids AS text[])) AND e.id = v.id AND e.version = v.version"
)


def _pg_insert_from_json(table: Any, names: Sequence[str]) -> Any:
    """``INSERT INTO table (names) SELECT names FROM json_populate_recordset(NULL::table,
    :p_rows)``: every row of a JSON array in one statement."""
    rows = func.json_populate_recordset(
        literal_column(f"NULL::{table.name}"), cast(bindparam("p_rows", type_=Text), JSON)
    ).table_valued(*names)
    return insert(table).from_select(list(names), select(*(rows.c[n] for n in names)))


_PG_INSERT_HISTORY = _pg_insert_from_json(steps, [c.name for c in steps.c])
_TASK_COLUMNS = [c.name for c in tasks.c if c.name != "id"]  # the id comes from its sequence
_PG_INSERT_TASKS = _pg_insert_from_json(tasks, _TASK_COLUMNS)


def history_rows(
    execution_id: str, first_seq: int, records: Sequence[StepRecord], now: dt.datetime
) -> list[dict[str, Any]]:
    """One step's history rows, numbered from ``first_seq``."""
    return _step_rows(execution_id, first_seq, records, now, None)


def insert_history(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the history rows of every step of the batch."""
    if not rows:
        return
    if dialects.is_sqlite(conn):
        _FAST_INSERT_STEPS.execute(conn, list(rows))
    else:
        conn.execute(_PG_INSERT_HISTORY, {"p_rows": jsoncodec.dumps_rows(rows)})


def task_rows(execution_id: str, specs: Sequence[TaskSpec], now: dt.datetime) -> list[dict[str, Any]]:
    """The rows of tasks armed pending for workers."""
    return _task_rows(execution_id, specs, now, None)


def insert_pending(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert the tasks every step of the batch armed, pending for workers."""
    if not rows:
        return
    if dialects.is_sqlite(conn):
        _INSERT_PENDING.execute(conn, list(rows))
    else:
        conn.execute(_PG_INSERT_TASKS, {"p_rows": jsoncodec.dumps_rows(rows)})


__all__ = [
    "history_rows",
    "insert_history",
    "insert_pending",
    "lock_executions",
    "take_claimed",
    "task_rows",
    "write_executions",
]
