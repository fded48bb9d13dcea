"""statem over HTTP: a JSON API under ``/api/v1`` and an operator console under ``/``.

>>> from statem.web import create_app
>>> app = create_app(engine)                       # any ASGI server runs it
>>> app = create_app(engine, read_only=True)       # look, never touch
>>> app = create_app(engine, token="s3cret")       # bearer token on every request

``statem serve`` runs it with uvicorn. Modules: :mod:`.app` (the factory), :mod:`.api`
(JSON routes), :mod:`.console` (HTML pages), :mod:`.problems` (problem+json errors),
:mod:`.security` (token, host, read-only, CSRF, body size), :mod:`.longpoll` (``?wait=``),
:mod:`.diagram` (SVG diagrams), :mod:`.models` (request/response bodies),
:mod:`.views` (what pages show), :mod:`.stats` (cached figures).
"""

from .app import create_app

__all__ = ["create_app"]
