"""Who may act: without a token the console is read-only; with one, an action needs the token
(`Authorization: Bearer TOKEN`, or the session cookie the login form sets) and a same-origin request.

The cookie holds an HMAC of the token, not the token: HttpOnly, SameSite=Strict, Secure behind
https. The same-origin check refuses a request whose `Origin` names another host or whose
`Sec-Fetch-Site` is `cross-site` (a browser sends one of them with every cross-site POST).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request

from distcomp_obs.errors import ConfigError

TOKEN_ENV = "DISTCOMP_CONSOLE_TOKEN"
COOKIE = "distcomp_console"


def load_token(token_file: str | None) -> str | None:
    """The token: the first line of --token-file, else DISTCOMP_CONSOLE_TOKEN, else None (read-only)."""
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError("token_file", token_file, f"a readable file ({exc.strerror})") from None
        token = lines[0].strip() if lines else ""
        if not token:
            raise ConfigError("token_file", token_file, "a file whose first line is the token")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"distcomp-console-session", hashlib.sha256).hexdigest()


def authorised(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "")
    if given.lower().startswith("bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_value(token).encode())


def _host(request: Request) -> str:
    return request.headers.get("x-forwarded-host") or request.headers.get("host", "")


def same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site", "").lower() == "cross-site":
        return False
    origin = request.headers.get("origin")
    if origin is None:
        return True  # not a browser's cross-site request (curl, scripts): the token decides
    return origin != "null" and urlsplit(origin).netloc.lower() == _host(request).lower()


def refusal(request: Request, token: str | None) -> str | None:
    """Why this action request is refused, or None when it may act."""
    if token is None:
        return f"the console is read-only: start it with --token-file or {TOKEN_ENV} to allow actions"
    if not same_origin(request):
        return "cross-origin request refused"
    if not authorised(request, token):
        return "an action needs the console token (Authorization: Bearer TOKEN, or log in)"
    return None


def secure(request: Request) -> bool:
    return (request.headers.get("x-forwarded-proto") or request.url.scheme) == "https"
