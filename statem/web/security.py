"""The guard in front of every route: host, bearer token, read-only mode, cross-site
writes, content type and body size; and the console's session and CSRF tokens.

* **Token.** With a token, every request but ``/healthz``, ``/login`` and ``/static/``
  must carry it: the API as ``Authorization: Bearer <token>``, the console as a session
  cookie set by ``/login`` (an HMAC of the token, never the token itself). Compared in
  constant time; never logged.
* **Host.** Without a token the app answers only requests addressed to a loopback name
  (``localhost``, ``127.0.0.1``, ``[::1]``, or ``allowed_hosts``), so a web page cannot
  reach it through DNS rebinding.
* **Cross-site writes.** A write whose ``Origin`` is not this server, or that the
  browser marks ``Sec-Fetch-Site: cross-site``, is refused (403); an API write with a
  body must be ``application/json`` (415), which a cross-site form cannot send.
* **Read-only.** Every write gets 405 (``Allow: GET, HEAD``).
* **Size.** A body over ``max_body`` bytes gets 413, by ``Content-Length`` or while read.
* **CSRF.** Console forms carry a token signed by the app (a per-browser cookie, HMACed
  with the app's secret: the signed double-submit pattern); a form without it gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import problem

SESSION_COOKIE = "statem_session"
CSRF_COOKIE = "statem_csrf"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: Paths that need no token: the load balancer's probe, the login form, the stylesheet.
OPEN_PATHS = ("/healthz", "/login")
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def is_loopback(host: str) -> bool:
    """True for a host name or address that only this machine can reach."""
    name = host.strip("[]").lower()
    return name in LOOPBACK_NAMES or name.startswith("127.")


def session_value(token: str) -> str:
    """The console's session cookie for ``token``: proves the token without holding it."""
    return hmac.new(token.encode(), b"statem-console-session", hashlib.sha256).hexdigest()


class Secrets:
    """The app's token (or none) and the key its CSRF tokens are signed with."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        # derived from the token when there is one, so several server processes agree
        seed = token.encode() if token else secrets.token_bytes(32)
        self._csrf_key = hashlib.sha256(b"statem-csrf:" + seed).digest()

    def bearer_ok(self, header: str | None) -> bool:
        """True when the Authorization header carries the token."""
        if self.token is None:
            return True
        if not header or not header.lower().startswith("bearer "):
            return False
        return hmac.compare_digest(header[7:].strip().encode(), self.token.encode())

    def session_ok(self, cookie: str | None) -> bool:
        """True when the console's session cookie proves the token."""
        if self.token is None:
            return True
        return bool(cookie) and hmac.compare_digest(str(cookie), session_value(self.token))

    def token_ok(self, given: str) -> bool:
        """True when a token typed into the login form is the token."""
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def csrf_token(self, browser: str) -> str:
        """The form token for a browser's CSRF cookie."""
        return hmac.new(self._csrf_key, browser.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, browser: str | None, form_token: str | None) -> bool:
        """True when a form's token matches the browser's cookie."""
        if not browser or not form_token:
            return False
        return hmac.compare_digest(self.csrf_token(browser), form_token)


def new_browser_id() -> str:
    """A fresh random value for the CSRF cookie."""
    return secrets.token_urlsafe(24)


LoginPage = Callable[[Scope], Response]


class Guard:
    """ASGI middleware applying the rules in the module docstring, before any route runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Secrets,
        read_only: bool,
        max_body: int,
        allowed_hosts: Sequence[str],
        login_page: LoginPage,
    ) -> None:
        self.app = app
        self.keys = keys
        self.read_only = read_only
        self.max_body = max_body
        self.allowed_hosts = {h.lower() for h in allowed_hosts}
        self.login_page = login_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refuse(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, self.limited(receive), send)

    def refuse(self, scope: Scope) -> Response | None:
        """The response that refuses this request, or None to let it through."""
        path: str = scope["path"]
        method: str = scope["method"]
        headers = Headers(scope=scope)
        api = path.startswith("/api/") or path == "/openapi.json"
        host = headers.get("host", "")
        if self.keys.token is None and not self._host_ok(host):
            return problem(403, f"host {host!r} is not served without a token; use a loopback address")
        if not self._authorized(path, api, headers):
            if api:
                return problem(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})
            return self.login_page(scope)
        if method in SAFE_METHODS:
            return None
        if self.read_only and path not in OPEN_PATHS and path != "/logout":
            return problem(405, "the server is read-only", slug="read-only", headers={"Allow": "GET, HEAD"})
        if not self._same_origin(headers):
            return problem(403, "cross-site writes are refused", slug="cross-site")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return problem(413, f"the request body is larger than {self.max_body} bytes")
        has_body = (length is not None and length != "0") or "transfer-encoding" in headers
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if api and has_body and not (ctype == "application/json" or ctype.endswith("+json")):
            return problem(415, f"send the body as application/json, not {ctype or 'no content type'}")
        return None

    def _host_ok(self, host: str) -> bool:
        name = urlsplit(f"//{host}").hostname or ""
        return is_loopback(name) or name.lower() in self.allowed_hosts

    def _authorized(self, path: str, api: bool, headers: Headers) -> bool:
        if self.keys.token is None or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return True
        if api:
            return self.keys.bearer_ok(headers.get("authorization"))
        cookies = _cookies(headers.get("cookie", ""))
        return self.keys.session_ok(cookies.get(SESSION_COOKIE)) or self.keys.bearer_ok(
            headers.get("authorization")
        )

    @staticmethod
    def _same_origin(headers: Headers) -> bool:
        if headers.get("sec-fetch-site", "") == "cross-site":
            return False
        origin = headers.get("origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()

    def limited(self, receive: Receive) -> Receive:
        """``receive`` that stops a body growing past ``max_body`` (chunked or lying uploads)."""
        seen = 0
        limit = self.max_body

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, f"the request body is larger than {limit} bytes")
            return message

        return receive_limited


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name] = value
    return out
