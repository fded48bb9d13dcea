"""The exceptions statem raises, as one tree.

::

    StatemError
    ├── DefinitionError        a machine definition is invalid (lists every problem)
    ├── MachineNotFound        no machine with that id (and version)
    ├── ExecutionNotFound      no execution with that id
    ├── ActionNotAllowed       the action is not available in the current state
    │   └── OperationNotAllowed   pause/resume/retry/move does not apply to the execution's status
    ├── StateNotFound          move/upgrade named a state the machine version does not have
    ├── ExpressionError        an expression failed to parse or to evaluate
    ├── InputError             an input, context or output is not JSON, or too large
    ├── LoopError              an always-chain ran past its bound
    ├── LimitExceeded          a documented bound was reached (child depth)
    ├── ConcurrencyError       a concurrent writer won (retry the call)
    │   └── IdempotencyConflict   a repeated id or key came with a different request
    └── StoreError             the database could not be reached or answered an error

Every error carries its details as attributes, so callers never parse messages.
In ``start``/``trigger`` every error raises and nothing is applied; in a step the
executor runs, the error marks the execution ``failed`` and is recorded in history.
"""

from __future__ import annotations

from collections.abc import Sequence


class StatemError(Exception):
    """Root of every error statem raises on purpose."""


def version_taken(version: int) -> str:
    """Why a definition cannot be saved under a version already saved with other content."""
    return f"version {version} is already saved with different content; save the change as a new version"


class DefinitionError(StatemError):
    """A machine definition is invalid.

    ``problems`` holds one ``(path, message)`` pair per problem found; the message
    lists all of them, each prefixed by the machine id and the dotted path.
    """

    def __init__(self, machine: str | None, problems: Sequence[tuple[str, str]]) -> None:
        self.machine = machine
        self.problems = list(problems)
        where = f"machine {machine!r}" if machine else "machine definition"
        lines = [f"{where}: {path}: {msg}" if path else f"{where}: {msg}" for path, msg in problems]
        if len(lines) == 1:
            super().__init__(lines[0])
        else:
            super().__init__(f"{len(lines)} problems in {where}:\n  " + "\n  ".join(lines))


class MachineNotFound(StatemError):
    """No machine is saved under this id (and version)."""

    def __init__(self, machine_id: str, version: int | None = None) -> None:
        self.machine_id = machine_id
        self.version = version
        if version is None:
            super().__init__(f"no machine {machine_id!r} is saved")
        else:
            super().__init__(f"machine {machine_id!r} has no version {version}")


class ExecutionNotFound(StatemError):
    """No execution has this id."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        super().__init__(f"no execution {execution_id!r}")


class ActionNotAllowed(StatemError):
    """The action cannot be taken now: unknown in this state, guard false, or final execution.

    ``state`` is the execution's current state, ``allowed`` the actions it offers.
    """

    def __init__(
        self,
        execution_id: str,
        action: str,
        state: str,
        allowed: Sequence[str],
        reason: str,
    ) -> None:
        self.execution_id = execution_id
        self.action = action
        self.state = state
        self.allowed = list(allowed)
        self.reason = reason
        offers = ", ".join(repr(a) for a in self.allowed) if self.allowed else "no actions"
        super().__init__(
            f"action {action!r} not allowed on execution {execution_id!r} in state {state!r}: "
            f"{reason} (state {state!r} allows {offers})"
        )


class OperationNotAllowed(ActionNotAllowed):
    """An operator's operation (``pause``, ``resume``, ``retry``, ``move``) does not apply
    to the execution as it is: ``status`` is the status that forbids it."""

    def __init__(self, execution_id: str, operation: str, state: str, status: str, reason: str) -> None:
        self.status = status
        StatemError.__init__(
            self, f"cannot {operation} execution {execution_id!r} (state {state!r}): {reason}"
        )
        self.execution_id = execution_id
        self.action = operation
        self.state = state
        self.allowed = []
        self.reason = reason


class StateNotFound(StatemError):
    """A state named by an operator (``move``, an upgrade's state map) is not in the machine version."""

    def __init__(self, machine_id: str, version: int, state: str, states: Sequence[str]) -> None:
        self.machine_id = machine_id
        self.version = version
        self.state = state
        self.states = list(states)
        super().__init__(
            f"machine {machine_id!r} version {version} has no state {state!r} "
            f"(its states: {', '.join(repr(s) for s in self.states)})"
        )


class ExpressionError(StatemError):
    """An expression did not parse, was forbidden, failed, or returned a non-JSON value.

    ``path`` is where the expression sits in the definition
    (``states.cart.actions.add.context.order``), ``expression`` its source text.
    """

    def __init__(self, message: str, *, expression: str = "", path: str = "") -> None:
        self.reason = message
        self.expression = expression
        self.path = path
        where = f" at {path}" if path else ""
        src = expression if len(expression) <= 200 else expression[:197] + "..."
        shown = f" in expression {src!r}" if expression else ""
        super().__init__(f"{message}{shown}{where}")


class InputError(StatemError):
    """A value handed to statem is not JSON (dict, list, str, int, float, bool, None) or too big."""


class LoopError(StatemError):
    """An always-chain took more steps than the bound allows; ``loop`` names the states cycled."""

    def __init__(self, message: str, loop: Sequence[str] = ()) -> None:
        self.loop = list(loop)
        super().__init__(message)


class ConcurrencyError(StatemError):
    """Another writer changed the execution first; nothing was applied, the call may be retried."""


class LimitExceeded(StatemError):
    """A documented bound was reached: ``what`` (e.g. ``child depth``), ``limit`` its bound."""

    def __init__(self, message: str, *, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(message)


class IdempotencyConflict(ConcurrencyError):
    """A repeated ``execution_id`` (start) or ``idempotency_key`` (trigger) came with a
    different request than the one it first named; nothing was applied.

    ``execution_id`` and ``key`` (None for a start) say which; ``differences`` maps each
    field that differs (``machine``, ``version``, ``action``, ``input``) to the pair
    ``(first request's value, this request's value)``.
    """

    def __init__(
        self, execution_id: str, key: str | None, differences: dict[str, tuple[object, object]]
    ) -> None:
        self.execution_id = execution_id
        self.key = key
        self.differences = differences
        named = (
            f"idempotency key {key!r} on execution {execution_id!r}"
            if key
            else f"execution id {execution_id!r}"
        )
        parts = [f"{field} {_brief(first)} then {_brief(now)}" for field, (first, now) in differences.items()]
        super().__init__(f"{named} was first used with a different request: " + "; ".join(parts))


def _brief(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StoreError(StatemError):
    """The database could not be reached, or failed in a way statem cannot recover from.

    ``outage`` is True when the database was away, locked or busy (retrying later may
    work), False when it refused the data itself (a constraint, a value it cannot store):
    a worker backs off on an outage, and fails the execution on a refusal.
    """

    def __init__(self, message: str, *, outage: bool = True) -> None:
        self.outage = outage
        super().__init__(message)
