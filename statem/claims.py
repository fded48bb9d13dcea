"""Finding work: the SQL a worker claims ready tasks with, and learns when the next is due.

A claim is one ``UPDATE ... RETURNING`` of the soonest ready tasks, read from two partial
indexes (pending tasks by due time, claimed ones by lease expiry: migration 0010); a
next-due lookup is one statement over the same indexes. Both take the names of the
effects the claiming process has as one value (:func:`effects_param`), so each statement
is compiled once per dialect. The steps the claimed tasks lead to are written by
:mod:`statem.store` and :mod:`statem.steps`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ARRAY,
    Connection,
    Row,
    Text,
    any_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from . import dialects, jsoncodec
from .fastsql import Prepared
from .kinds import TaskKind, TaskStatus
from .schema import services, tasks

__all__ = ["claim_tasks", "claim_timers", "effects_param", "next_due", "renew_leases"]


# The status of a claim's arms is spelled as a literal: only then can the planner (a
# generic plan on PostgreSQL, any plan on SQLite) read the partial index of that status.
_PENDING = tasks.c.status == literal_column(f"'{TaskStatus.pending}'")
_CLAIMED = tasks.c.status == literal_column(f"'{TaskStatus.claimed}'")
_NOW = bindparam("p_now", type_=tasks.c.due_at.type)
_CLAIM_VALUES = {
    "status": TaskStatus.claimed,
    "claim": bindparam("p_claim"),
    "owner": bindparam("p_owner"),
    "lease_expires_at": bindparam("p_lease", type_=tasks.c.lease_expires_at.type),
    "attempts": tasks.c.attempts + 1,
}


# An effect task is claimed only by a worker that has its effect (``p_effects``, the
# names registered in the claiming process) or when it is a saved service's operation;
# other tasks by anyone.
# A saved service's operation (``<service id>.<operation>``) runs in any process.
_SERVICE_OPERATION = (
    select(services.c.service_id)
    .where(
        func.substr(tasks.c.effect, 1, func.length(services.c.service_id) + 1)
        == services.c.service_id.concat(".")
    )
    .exists()
)


def _can_run(dialect: str) -> Any:
    """The tasks a process can run. Its effect names travel as one value, so the
    statement's text is the same whatever they are (compiled once, and run on the driver
    on SQLite): a PostgreSQL array, a SQLite JSON array unpacked by ``json_each``
    (:func:`effects_param`). An expanding IN was rendered anew by SQLAlchemy on every
    claim and every next-due lookup."""
    mine: ColumnElement[bool]
    if dialect == "sqlite":
        names = bindparam("p_effects", type_=Text)
        mine = tasks.c.effect.in_(select(literal_column("value")).select_from(func.json_each(names)))
    else:
        mine = tasks.c.effect == any_(bindparam("p_effects", type_=ARRAY(Text)))
    return or_(tasks.c.effect.is_(None), mine, _SERVICE_OPERATION)


def effects_param(conn: Connection, effects: Sequence[str]) -> Any:
    """``p_effects`` of the claim and next-due statements, as :func:`_can_run` binds it."""
    return jsoncodec.dumps(list(effects)) if dialects.is_sqlite(conn) else list(effects)


def _claim_statement(dialect: str, kind: str | None = None) -> Prepared:
    """``UPDATE ... WHERE id IN (the soonest ready ids) RETURNING *``: a claim in one statement.

    Ready is pending and due, or claimed under a lapsed lease (its worker died). Each is
    its own arm, read in its own order from its own partial index (migration 0010) and
    stopped at the limit, so a claim reads about ``p_limit`` index entries however many
    tasks are ready; the soonest due of both arms are claimed.

    Without ``kind``: any ready task this process can run (:func:`_can_run`, bound by
    ``p_effects``); with ``kind``: fresh pending tasks of that kind only (timers, which any
    process can run, and a batch takes fresh ones only: see :func:`claim_timers`)."""
    limit: Any = bindparam("p_limit")
    skip_locked = dialect != "sqlite"
    which = (tasks.c.kind == kind, tasks.c.attempts == 0) if kind is not None else (_can_run(dialect),)

    def arm(status: Any, due: Any, order: Any) -> Any:
        q = select(tasks.c.id, tasks.c.due_at).where(status, due, *which).order_by(order).limit(limit)
        return q.with_for_update(skip_locked=True) if skip_locked else q

    pending = arm(_PENDING, tasks.c.due_at <= _NOW, tasks.c.due_at).subquery("pending")
    if kind is not None:
        ready = select(pending.c.id)
    else:
        lapsed = arm(_CLAIMED, tasks.c.lease_expires_at < _NOW, tasks.c.lease_expires_at).subquery("lapsed")
        both = union_all(*(select(a.c.id, a.c.due_at) for a in (pending, lapsed))).subquery()
        ready = select(both.c.id).order_by(both.c.due_at).limit(limit)
    claimed = tasks.c.id.in_(ready.scalar_subquery())
    return Prepared(update(tasks).where(claimed).values(_CLAIM_VALUES).returning(*tasks.c))


_CLAIM = {name: _claim_statement(name) for name in ("sqlite", "postgresql")}
_CLAIM_TIMERS = {name: _claim_statement(name, kind=TaskKind.timer) for name in ("sqlite", "postgresql")}


def claim_tasks(
    conn: Connection,
    *,
    owner: str,
    claim: str,
    now: dt.datetime,
    lease_until: dt.datetime,
    limit: int,
    effects: Sequence[str],
) -> list[Row[Any]]:
    """Claim up to ``limit`` ready tasks (pending and due, or claimed with an expired lease),
    soonest due first, in one statement; effect tasks only for the ``effects`` named (those
    the claiming process can run: the others wait for a worker that has them).

    On PostgreSQL the candidates are locked with ``FOR UPDATE SKIP LOCKED`` so concurrent
    workers never claim the same row; SQLite serializes writers with ``BEGIN IMMEDIATE``.
    Each claimed row gets a fresh ``claim`` token: results are committed only under it.
    """
    params = {"p_now": now, "p_limit": limit, "p_claim": claim, "p_owner": owner, "p_lease": lease_until,
              "p_effects": effects_param(conn, effects)}  # fmt: skip
    rows = _CLAIM[conn.dialect.name].all(conn, params)
    return sorted(rows, key=lambda r: r.due_at)


def claim_timers(
    conn: Connection, *, owner: str, claim: str, now: dt.datetime, lease_until: dt.datetime, limit: int
) -> list[Row[Any]]:
    """The extra timers a busy worker fires in batches: pending timers never claimed before.

    A timer whose earlier claim lapsed (its worker died, perhaps because of this very
    timer) comes back only through :func:`claim_tasks`, and is fired on its own: a worker
    that dies holding a batch costs each of the batch's timers one claim, once, never one
    per crash while a poisonous timer keeps killing workers."""
    params = {"p_now": now, "p_limit": limit, "p_claim": claim, "p_owner": owner, "p_lease": lease_until}
    rows = _CLAIM_TIMERS[conn.dialect.name].all(conn, params)
    return sorted(rows, key=lambda r: r.due_at)


def renew_leases(conn: Connection, claims: Iterable[tuple[int, str]], lease_until: dt.datetime) -> None:
    """Extend the lease of tasks still held under these claims (each row fenced by its
    claim token): one statement on PostgreSQL, one ``executemany`` on SQLite, whatever
    their number. A worker firing a burst of timers holds thousands of claims; renewing
    them one statement each held SQLite's write lock for a fifth of a second."""
    held = list(claims)
    if not held:
        return
    if dialects.is_sqlite(conn):
        _LITE_RENEW.execute(conn, [{"p_id": i, "p_claim": c, "p_lease": lease_until} for i, c in held])
        return
    ids, tokens = [i for i, _ in held], [c for _, c in held]
    conn.execute(_PG_RENEW, {"p_ids": ids, "p_claims": tokens, "p_lease": lease_until})


_LEASE = bindparam("p_lease", type_=tasks.c.lease_expires_at.type)
_LITE_RENEW = Prepared(
    update(tasks)
    .where(tasks.c.id == bindparam("p_id"), tasks.c.claim == bindparam("p_claim"), _CLAIMED)
    .values(lease_expires_at=_LEASE)
)
# each task by its primary key, fenced by its token (the rows travel as two arrays, so the
# statement's text is the same whatever their number)
_PG_RENEW = text(
    "UPDATE statem_tasks AS t SET lease_expires_at = :p_lease"
    " FROM unnest(CAST(:p_ids AS bigint[]), CAST(:p_claims AS text[])) AS c(id, claim)"
    " WHERE t.id = c.id AND t.claim = c.claim AND t.status = 'claimed'"
).bindparams(_LEASE)


def _next_due_statement(dialect: str) -> Prepared:
    """Both in one statement (one round trip): the next pending task's due time, the next
    lapse of a claim's lease; each an ordered walk of its partial index."""
    can_run = _can_run(dialect)
    return Prepared(
        select(
            select(func.min(tasks.c.due_at)).where(_PENDING, can_run).scalar_subquery(),
            select(func.min(tasks.c.lease_expires_at)).where(_CLAIMED, can_run).scalar_subquery(),
        )
    )


_NEXT_DUE = {name: _next_due_statement(name) for name in ("sqlite", "postgresql")}


def next_due(conn: Connection, effects: Sequence[str]) -> dt.datetime | None:
    """When the next pending task a process with ``effects`` can run is due, or the next
    lease on one expires."""
    found = _NEXT_DUE[conn.dialect.name].first(conn, {"p_effects": effects_param(conn, effects)})
    assert found is not None  # an aggregate: always one row
    pending, lease = tuple(found)
    times: list[dt.datetime] = [t for t in (pending, lease) if t is not None]
    return min(times) if times else None
