"""Retention: delete old final executions with their history and tasks, in bounded batches.

What goes: executions that are ``finished`` or ``canceled`` (the only final statuses:
``failed`` waits for an operator, ``paused`` for a resume) and last moved before a
cutoff, each with the whole tree of its child executions, their history rows and any
task rows left on them. What stays: everything unfinished, and a final execution whose
parent still exists (it goes with its parent, once the parent goes), and a final parent
with an unfinished descendant anywhere below it (it is kept whole, and counted as kept).

How: the candidates are walked in ``(updated_at, id)`` order with a keyset cursor, one
short transaction per batch of ``batch`` root executions (locked with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, under the single write lock on SQLite), so no lock is held
longer than one batch's deletes and a kept tree is never looked at twice. A batch
deletes tasks, then history, then executions (the foreign keys point that way).

All the SQL of retention is here; :meth:`statem.engine.Engine.purge` is the entry point.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, func, or_, select, text
from sqlalchemy.orm import aliased

from .dialects import transaction
from .kinds import Status
from .schema import executions, steps, tasks

#: The statuses nothing can move any more: only these are purged.
PURGEABLE: tuple[str, ...] = (Status.finished, Status.canceled)
#: Ids per ``IN (...)`` list (SQLite's default bound on bound parameters is far above this).
_CHUNK = 500


@dataclass
class PurgeCounts:
    """What a purge deleted (or, with ``dry_run``, would delete), and how far it got.

    ``total`` is the number of candidate root executions counted when the purge began
    (final, old enough, not a child of an execution still stored); ``examined`` how many
    of them the batches have looked at so far; ``kept`` those kept because something
    under them is unfinished. ``executions`` counts roots and their children.
    """

    executions: int = 0
    steps: int = 0
    tasks: int = 0
    examined: int = 0
    kept: int = 0
    batches: int = 0
    total: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The counts as a plain dict (for ``--json``)."""
        return asdict(self)


Progress = Callable[[PurgeCounts], None]

_parent = aliased(executions, name="parent")
_ROOT = or_(
    executions.c.parent_id.is_(None),
    ~exists().where(_parent.c.id == executions.c.parent_id),
)


def _candidates(cutoff: dt.datetime, machine_id: str | None) -> list[Any]:
    """The WHERE clause of a purge candidate root, for one status at a time (see _walk)."""
    where = [executions.c.updated_at < cutoff, _ROOT]
    if machine_id is not None:
        where.append(executions.c.machine_id == machine_id)
    return where


def count_candidates(conn: Connection, cutoff: dt.datetime, machine_id: str | None) -> int:
    """How many root executions a purge with this cutoff and machine would look at."""
    q = (
        select(func.count())
        .select_from(executions)
        .where(executions.c.status.in_(PURGEABLE), *_candidates(cutoff, machine_id))
    )
    return int(conn.execute(q).scalar() or 0)


def _next_roots(
    conn: Connection,
    status: str,
    cutoff: dt.datetime,
    machine_id: str | None,
    after: tuple[dt.datetime, str] | None,
    limit: int,
) -> Sequence[Any]:
    """The next ``limit`` candidate roots of one status after the cursor, oldest first,
    locked (PostgreSQL skips rows another transaction holds; they come in a later run)."""
    q = select(executions.c.id, executions.c.updated_at).where(
        executions.c.status == status, *_candidates(cutoff, machine_id)
    )
    if after is not None:
        at, last_id = after
        q = q.where(
            or_(executions.c.updated_at > at, and_(executions.c.updated_at == at, executions.c.id > last_id))
        )
    q = q.order_by(executions.c.updated_at, executions.c.id).limit(limit)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=executions)
    return conn.execute(q).all()


_TREE = text(
    """
    WITH RECURSIVE tree(root, id, status) AS (
        SELECT id, id, status FROM statem_executions WHERE id IN :roots
        UNION ALL
        SELECT tree.root, e.id, e.status FROM statem_executions e JOIN tree ON e.parent_id = tree.id
    )
    SELECT root, id, status FROM tree
    """
).bindparams(bindparam("roots", expanding=True))


def _chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield list(ids[i : i + _CHUNK])


def _trees(conn: Connection, roots: Sequence[str]) -> tuple[list[str], int]:
    """The executions to delete under these roots (roots included, parents first), and
    how many roots are kept because an execution in their tree is unfinished."""
    members: dict[str, list[tuple[str, str]]] = {}
    for chunk in _chunks(roots):
        for root, eid, status in conn.execute(_TREE, {"roots": chunk}):
            members.setdefault(root, []).append((eid, status))
    doomed: list[str] = []
    kept = 0
    for root in roots:
        tree = members.get(root, [])
        if tree and all(status in PURGEABLE for _, status in tree):
            doomed += [eid for eid, _ in tree]
        else:
            kept += 1
    return doomed, kept


def _lock(conn: Connection, ids: Sequence[str]) -> None:
    """PostgreSQL: lock the children too (parents are locked already), so a worker
    appending a late history row waits for the delete instead of failing it."""
    if conn.dialect.name != "postgresql":
        return
    for chunk in _chunks(ids):
        conn.execute(
            select(executions.c.id)
            .where(executions.c.id.in_(chunk))
            .order_by(executions.c.id)
            .with_for_update()
        )


def _delete(conn: Connection, ids: Sequence[str], counts: PurgeCounts) -> None:
    """Delete the executions' tasks, history and rows (in that order: the foreign keys)."""
    for chunk in _chunks(ids):
        counts.tasks += conn.execute(delete(tasks).where(tasks.c.execution_id.in_(chunk))).rowcount
        counts.steps += conn.execute(delete(steps).where(steps.c.execution_id.in_(chunk))).rowcount
        counts.executions += conn.execute(
            delete(executions).where(executions.c.id.in_(chunk), executions.c.status.in_(PURGEABLE))
        ).rowcount


def _count(conn: Connection, ids: Sequence[str], counts: PurgeCounts) -> None:
    """What :func:`_delete` would delete (a dry run)."""
    for chunk in _chunks(ids):
        counts.tasks += int(
            conn.execute(select(func.count()).where(tasks.c.execution_id.in_(chunk))).scalar() or 0
        )
        counts.steps += int(
            conn.execute(select(func.count()).where(steps.c.execution_id.in_(chunk))).scalar() or 0
        )
        counts.executions += len(chunk)


def purge(
    db: Engine,
    cutoff: dt.datetime,
    *,
    machine_id: str | None = None,
    batch: int = 1000,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PurgeCounts:
    """Delete (or with ``dry_run`` count) the final executions older than ``cutoff``.

    One transaction on ``db`` per batch of at most ``batch`` roots (a reading one for a
    dry run)
    (their children come along); ``progress`` is called with the running counts after
    each batch. Safe to interrupt: every committed batch is complete, nothing is half
    deleted, and a second run carries on.
    """
    if cutoff.tzinfo is None:
        raise ValueError("purge: finished_before must be an aware datetime (UTC)")
    if batch < 1:
        raise ValueError(f"purge: batch must be at least 1, got {batch}")
    counts = PurgeCounts(dry_run=dry_run)
    with transaction(db, write=False) as conn:
        counts.total = count_candidates(conn, cutoff, machine_id)
    for status in PURGEABLE:
        after: tuple[dt.datetime, str] | None = None
        while True:
            with transaction(db, write=not dry_run) as conn:
                roots = _next_roots(conn, status, cutoff, machine_id, after, batch)
                if not roots:
                    break
                after = (roots[-1].updated_at, roots[-1].id)
                doomed, kept = _trees(conn, [r.id for r in roots])
                if dry_run:
                    _count(conn, doomed, counts)
                else:
                    _lock(conn, doomed)
                    _delete(conn, doomed, counts)
            counts.examined += len(roots)
            counts.kept += kept
            counts.batches += 1
            if progress is not None:
                progress(counts)
            if len(roots) < batch:
                break
    return counts
