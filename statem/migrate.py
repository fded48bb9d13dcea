"""Run the Alembic migrations, from a checkout (``migrations/``) or an installed wheel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from .dialects import store_error

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


def upgrade(db: Engine, revision: str = "head") -> None:
    """``alembic upgrade`` on the database ``db`` connects to (a SQLAlchemy engine, e.g.
    ``statem.Engine(...).db``); database failures raise StoreError."""
    _run(db, command.upgrade, revision)


def downgrade(db: Engine, revision: str) -> None:
    """``alembic downgrade`` on the database ``db`` connects to."""
    _run(db, command.downgrade, revision)


def _run(db: Engine, action: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config(str(db.url.render_as_string(hide_password=False)))
    try:
        with db.connect() as conn:
            cfg.attributes["connection"] = conn
            action(cfg, revision)
            conn.commit()
    except DBAPIError as exc:
        raise store_error(exc) from exc
