"""Bearer-token authentication and the bind-address rule of ``generatect serve``.

* The token comes from a file (``--token-file``) or the ``GENERATECT_TOKEN`` environment variable; it is
  compared in constant time (:func:`hmac.compare_digest`).
* Every ``/v1/...`` route needs ``Authorization: Bearer <token>`` except ``/v1/health/live``. The API
  description (``/openapi.json``, ``/docs``) stays public: it holds no data, and a browser cannot send a
  bearer header when it opens ``/docs`` (its "Authorize" button adds the token to the API calls).
* The server refuses to listen on anything but a loopback address without a token. On loopback without a
  token, authentication is off (with a warning): any local user can then submit jobs.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

TOKEN_ENV = "GENERATECT_TOKEN"
MIN_TOKEN_CHARS = 16
PUBLIC_PATHS = frozenset({"/v1/health/live"})


def load_token(token_file: str | os.PathLike | None = None, *, environ=None) -> str | None:
    """The token from ``token_file`` (first line, stripped), else ``$GENERATECT_TOKEN``, else None.

    Raises:
        ValueError: the file is missing or unreadable, or the token is shorter than 16 characters.
    """
    environ = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--token-file: cannot read {path} ({exc})") from exc
        token, source = (text.strip().splitlines() or [""])[0].strip(), str(path)
        try:
            if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                log.warning("token file %s is readable by other users; chmod 600 it", path)
        except OSError:
            pass
    elif environ.get(TOKEN_ENV):
        token, source = environ[TOKEN_ENV].strip(), f"${TOKEN_ENV}"
    else:
        return None
    if len(token) < MIN_TOKEN_CHARS:
        raise ValueError(
            f"the token in {source} has {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1``; False for wildcards (0.0.0.0, ::) and other names."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Raise ValueError when ``host`` is not loopback and there is no token."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to listen on {host} without a token: anyone on the network could run jobs. Give "
            f"--token-file FILE or set {TOKEN_ENV}, or bind 127.0.0.1"
        )


def token_matches(header_value: str | None, token: str) -> bool:
    """Constant-time check of an ``Authorization`` header value against ``Bearer <token>``."""
    scheme, _, given = (header_value or "").partition(" ")
    # compare even on a wrong scheme, so the timing does not tell which part was wrong
    matches = hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))
    return matches and scheme.lower() == "bearer"


class BearerAuthMiddleware:
    """ASGI middleware: 401 on every ``/v1/...`` path (known or not) without the right bearer token.

    It runs before routing and body parsing, so a wrong token gets 401 whatever the payload.
    """

    def __init__(self, app, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        if token_matches(header.decode("latin-1"), self.token):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "missing or wrong bearer token (Authorization: Bearer <token>)"}).encode()
        await send({
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="generatect"'),
            ],
        })
        await send({"type": "http.response.body", "body": body})
