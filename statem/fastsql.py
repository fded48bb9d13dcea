"""SQLite: the statements of a step, compiled once and run straight on the driver.

On SQLite a statement runs in about 15 microseconds; SQLAlchemy's execution around it
(cache key, execution context, parameter and result processing, the Result object) costs
about 100 more: the larger part of a ``trigger()``. The few statements every step runs are
therefore compiled once per engine by SQLAlchemy itself (the same SQL text, the same bind
and result processors: what is stored and read back is exactly what ``conn.execute``
would store and read) and run on the connection's driver cursor inside the caller's
transaction. What stays the same as through ``conn.execute``:

* a driver error is raised as SQLAlchemy's wrapped ``DBAPIError`` (``IntegrityError``,
  ``OperationalError``...), which :func:`statem.dialects.transaction` turns into
  StoreError;
* ``before_cursor_execute`` / ``after_cursor_execute`` listeners see every statement (the
  benchmarks count statements with them).

On any other database a :class:`Prepared` runs its statement through ``conn.execute``
as before (on PostgreSQL a round trip dwarfs SQLAlchemy's share).
"""

from __future__ import annotations

import operator
import sqlite3
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row
from sqlalchemy.engine import Dialect, result_tuple
from sqlalchemy.exc import DBAPIError

__all__ = ["Prepared"]

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Form:
    """A statement as compiled for one dialect: SQL text, binds in order, processors."""

    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    binds: tuple[Processor, ...]
    results: tuple[Processor, ...]
    row: Callable[[Iterable[Any]], Row[Any]] | None
    #: the bind values in order from a dict holding every name (a C-level getter)
    values: Callable[[dict[str, Any]], tuple[Any, ...]]
    #: (position, processor) of the binds that have a processor
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]


class Prepared:
    """A SQLAlchemy Core statement, compiled once per SQLite dialect and run on the driver
    (elsewhere, through ``conn.execute``).

    ``column_keys`` (an INSERT): the columns given, as SQLAlchemy compiles an INSERT for the
    keys of its parameters. Statements with expanding (``IN``) parameters are not supported.
    """

    def __init__(self, statement: Any, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._forms: weakref.WeakKeyDictionary[Dialect, _Form] = weakref.WeakKeyDictionary()
        self._last: tuple[Dialect, _Form] | None = None  # most calls are on one engine

    def _form(self, dialect: Dialect) -> _Form:
        last = self._last
        if last is not None and last[0] is dialect:
            return last[1]
        form = self._forms.get(dialect)
        if form is None:
            form = self._forms[dialect] = self._compile(dialect)
        self._last = (dialect, form)
        return form

    def _compile(self, dialect: Dialect) -> _Form:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        if "POSTCOMPILE" in compiled.string:
            raise ValueError(f"statem.fastsql runs no expanding (IN) parameters: {compiled.string}")
        names = tuple(compiled.positiontup or ())
        processors = compiled._bind_processors
        defaults = {name: bind.value for name, bind in compiled.binds.items() if not bind.required}
        columns = compiled._result_columns or []
        results = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
        row = result_tuple([c.keyname for c in columns]) if columns else None
        binds = tuple(processors.get(n) for n in names)
        processed = tuple((i, p) for i, p in enumerate(binds) if p is not None)
        return _Form(compiled.string, names, defaults, binds, results, row, _getter(names), processed)

    def _args(self, form: _Form, params: dict[str, Any]) -> tuple[Any, ...] | list[Any]:
        # binds left to their defaults (a literal the statement was built with) come from
        # them; a name in neither raises KeyError, as SQLAlchemy does
        values: tuple[Any, ...] | list[Any] = form.values(
            {**form.defaults, **params} if form.defaults else params
        )
        if form.processed:
            values = list(values)
            for i, process in form.processed:
                values[i] = process(values[i])
        return values

    def execute(self, conn: Connection, params: dict[str, Any] | Sequence[dict[str, Any]]) -> int:
        """Run with one set of parameters, or once per set in a list (``executemany``);
        returns the rows an INSERT, UPDATE or DELETE changed (summed over the sets)."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params).rowcount
        form = self._form(conn.dialect)
        if isinstance(params, dict):
            cursor = _run(conn, form.sql, self._args(form, params), many=False)
        else:
            cursor = _run(conn, form.sql, [self._args(form, p) for p in params], many=True)
        return cursor.rowcount

    def first(self, conn: Connection, params: dict[str, Any]) -> Row[Any] | None:
        """The first row of a SELECT (or RETURNING), processed as SQLAlchemy would; or None."""
        if conn.dialect.name != "sqlite":
            return conn.execute(self.statement, params).first()
        form = self._form(conn.dialect)
        found = _run(conn, form.sql, self._args(form, params), many=False).fetchone()
        return None if found is None else _row(form, found)

    def all(self, conn: Connection, params: dict[str, Any]) -> list[Row[Any]]:
        """Every row of a SELECT (or RETURNING), processed as SQLAlchemy would."""
        if conn.dialect.name != "sqlite":
            return list(conn.execute(self.statement, params).all())
        form = self._form(conn.dialect)
        return [_row(form, found) for found in _run(conn, form.sql, self._args(form, params), many=False)]

    def scalar(self, conn: Connection, params: dict[str, Any]) -> Any:
        """The first column of the first row, or None."""
        found = self.first(conn, params)
        return None if found is None else found[0]

    def inserted_id(self, conn: Connection, params: dict[str, Any]) -> int:
        """SQLite: run an INSERT of one row; its rowid (the driver's ``lastrowid``)."""
        form = self._form(conn.dialect)
        rowid = _run(conn, form.sql, self._args(form, params), many=False).lastrowid
        assert rowid is not None
        return rowid


def _getter(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    if not names:
        return lambda _params: ()
    if len(names) == 1:
        name = names[0]
        return lambda params: (params[name],)
    return operator.itemgetter(*names)


def _row(form: _Form, found: Sequence[Any]) -> Row[Any]:
    assert form.row is not None
    pairs = zip(form.results, found, strict=True)
    return form.row(value if process is None else process(value) for process, value in pairs)


def _run(conn: Connection, sql: str, args: Any, *, many: bool) -> sqlite3.Cursor:
    if not conn.in_transaction():
        conn.begin()  # as conn.execute does (autobegin): never a statement outside a transaction
    cursor: sqlite3.Cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr,assignment]
    # the listeners, looked up only when the engine has any (a plain attribute: looking
    # the event collections up costs more than SQLite's own work on a small statement)
    events = conn._has_events or conn.engine._has_events
    if events and conn.dispatch.before_cursor_execute:
        conn.dispatch.before_cursor_execute(conn, cursor, sql, args, None, many)
    try:
        if many:
            cursor.executemany(sql, args)
        else:
            cursor.execute(sql, args)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(sql, args, exc, sqlite3.Error, dialect=conn.dialect) from exc
    if events and conn.dispatch.after_cursor_execute:
        conn.dispatch.after_cursor_execute(conn, cursor, sql, args, None, many)
    return cursor
