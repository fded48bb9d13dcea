"""statem: a durable state-machine engine for Python.

Machines are versioned data; executions and their full history live in SQL (SQLite
embedded, PostgreSQL to scale out); workers driven by APScheduler run effects, child
machines and timers.

>>> from statem import Engine
>>> engine = Engine("sqlite:///statem.db")
>>> engine.migrate()
"""

from .definition import Machine, load_definition
from .engine import Engine
from .errors import (
    ActionNotAllowed,
    ConcurrencyError,
    DefinitionError,
    ExecutionNotFound,
    ExpressionError,
    IdempotencyConflict,
    InputError,
    LimitExceeded,
    LoopError,
    MachineNotFound,
    OperationNotAllowed,
    StatemError,
    StateNotFound,
    StoreError,
)
from .records import Execution, MachineInfo, Step, Task
from .settings import WorkerSettings
from .worker import Worker

__version__ = "0.1.0"

__all__ = [
    "ActionNotAllowed",
    "ConcurrencyError",
    "DefinitionError",
    "Engine",
    "Execution",
    "ExecutionNotFound",
    "ExpressionError",
    "IdempotencyConflict",
    "InputError",
    "LimitExceeded",
    "LoopError",
    "Machine",
    "MachineInfo",
    "MachineNotFound",
    "OperationNotAllowed",
    "StateNotFound",
    "StatemError",
    "Step",
    "StoreError",
    "Task",
    "Worker",
    "WorkerSettings",
    "__version__",
    "load_definition",
]
