"""Run the Alembic migrations, from a checkout (``migrations/``) or an installed wheel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from alembic import command
from alembic.config import Config
from sqlalchemy.exc import DBAPIError

if TYPE_CHECKING:
    from .engine import Engine

PACKAGE_DIR = Path(__file__).resolve().parent


def script_location() -> Path:
    """Where the migration scripts are: bundled in the wheel, or the checkout's ``migrations/``."""
    bundled = PACKAGE_DIR / "_migrations"
    if bundled.is_dir():
        return bundled
    checkout = PACKAGE_DIR.parent / "migrations"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError("statem's migrations are missing from this installation")


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that needs no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """``alembic upgrade`` on the engine's database; database failures raise StoreError."""
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """``alembic downgrade`` on the engine's database."""
    _run(engine, command.downgrade, revision)


def _run(engine: Engine, action: Callable[[Config, str], None], revision: str) -> None:
    from .engine import store_error

    cfg = alembic_config(str(engine.db.url.render_as_string(hide_password=False)))
    try:
        with engine.db.connect() as conn:
            cfg.attributes["connection"] = conn
            action(cfg, revision)
            conn.commit()
    except DBAPIError as exc:
        raise store_error(exc) from exc
