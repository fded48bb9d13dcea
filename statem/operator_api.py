"""The operator's half of :class:`statem.Engine`: pause, resume, retry, move, upgrade.

A mixin over the engine's :class:`~statem.runtime.Runtime`; the work is done by
:mod:`statem.operations` and :mod:`statem.upgrade` (DESIGN.md sections 8 and 9).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import operations
from . import upgrade as upgrading
from .records import Execution
from .runtime import Runtime
from .upgrade import UpgradeItem, UpgradeReport


class OperatorAPI:
    """Operating live executions. Each operation is one transaction per execution,
    recorded as a history step of its own kind with ``input = {"reason": ..., ...}``."""

    _runtime: Runtime

    def pause(self, execution_id: str, reason: str | None = None) -> Execution:
        """Pause a running or waiting execution and its unfinished children: nothing moves
        it until :meth:`resume`; timers, results and triggers that arrive meanwhile are kept
        (in the database) and applied after resume in order of arrival. A no-op on a paused
        one; OperationNotAllowed (an ActionNotAllowed) on any other status."""
        return operations.pause(self._runtime, execution_id, reason)

    def resume(self, execution_id: str, reason: str | None = None) -> Execution:
        """Resume a paused execution (and its paused children); the executor then applies
        the kept events, each as its own step. OperationNotAllowed if it is not paused."""
        return operations.resume(self._runtime, execution_id, reason)

    def retry(self, execution_id: str, reason: str | None = None) -> Execution:
        """Re-run what failed a ``failed`` execution (the failed invoke, under the same
        idempotency key for an effect, or the failed step with the same event), on the
        version it is pinned to now. OperationNotAllowed unless it is failed."""
        return operations.retry(self._runtime, execution_id, reason)

    def move(
        self,
        execution_id: str,
        state: str,
        context: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> Execution:
        """Operator override: put an unfinished execution in ``state`` of its version, merge
        ``context`` (JSON values), discard its armed work (children are canceled) and enter
        the state as a transition does. StateNotFound for a state the version lacks;
        OperationNotAllowed on a finished or canceled execution."""
        return operations.move(self._runtime, execution_id, state, context, reason)

    def upgrade(
        self,
        machine_id: str,
        to_version: int,
        from_version: int | None = None,
        states: Mapping[str, str] | None = None,
        context: str | None = None,
        execution_ids: Sequence[str] | None = None,
        apply: bool = False,
        only_if_replays: bool = False,
        reason: str | None = None,
        *,
        progress: Callable[[UpgradeItem], None] | None = None,
    ) -> UpgradeReport:
        """Move unfinished executions of a machine to version ``to_version`` (DESIGN.md §9).

        A dry run by default (nothing is written). ``states`` maps old state names to new
        ones; ``context`` is an expression over ``ctx``/``execution`` yielding a mapping
        merged into the context. Each execution is upgraded or refused on its own, in its
        own transaction (refused and skipped ones are left exactly as they were); every
        item carries the replay check in a dry run and with ``only_if_replays`` (then only
        the ``same`` ones are upgraded). ``progress`` is called with each item.
        """
        return upgrading.upgrade(
            self._runtime, machine_id, to_version, from_version=from_version, states=states, context=context,
            execution_ids=execution_ids, apply=apply, only_if_replays=only_if_replays, reason=reason,
            progress=progress,
        )  # fmt: skip
