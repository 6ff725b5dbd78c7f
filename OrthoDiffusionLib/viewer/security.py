"""Who may use a running viewer: a per-launch secret, the served address, and the folders it may browse.

A web page the user happens to visit can open WebSockets and send requests to ``127.0.0.1``; a DNS-rebinding page
can even reach it under its own host name. :class:`ViewerGuard` closes both, as Jupyter does:

- a random secret (``secrets.token_urlsafe``) is made at each launch and is part of the address the viewer prints,
  ``http://127.0.0.1:PORT/?token=SECRET``. Opening that address sets an HttpOnly, SameSite=Strict cookie and hands
  the secret to the page, whose WebSocket session must present it (wslink's ``wslink.hello`` authentication, which
  trame otherwise runs with a public default). The app page is refused without the token or the cookie;
- every HTTP request and WebSocket upgrade must carry a ``Host`` header naming the served address (a loopback name
  when serving on loopback; the port is free, for SSH tunnels), and an ``Origin`` header, when present, must be the
  page's own address (scheme aside, the same host and port as ``Host``): ``Origin: http://evil.example.com``,
  another local port or a foreign ``Host:`` get 403 before any handler runs;
- the folder picker only lists and opens folders inside the roots the viewer was started with (the folders named on
  the command line, its output folder; the current folder when nothing was named): :meth:`ViewerGuard.allows_folder`.
"""
from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Iterable, List, Optional, Set, Union
from urllib.parse import urlencode, urlsplit

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PathLike = Union[str, os.PathLike]
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Paths that serve the app page itself (the rest is static, public code: scripts, styles, icons).
PAGE_PATHS = ("/", "/index.html")


def _host_key(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host


def _split_host_port(text: str, default_port: int) -> Optional[tuple]:
    """``(host, port)`` of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``), None when malformed."""
    try:
        parts = urlsplit(f"//{text.strip()}")
        port = parts.port
        host = parts.hostname
    except ValueError:
        return None
    if not host:
        return None
    return _host_key(host), (default_port if port is None else int(port))


class ViewerGuard:
    """The access rules of one viewer launch.

    Args:
        roots: folders the picker may browse (each with everything below it).
        token: the secret (default: ``od`` and a fresh ``secrets.token_urlsafe(32)``).

    Attributes:
        host: the address served on (set by :meth:`install`).
        port: the port served on (known once bound).
    """

    def __init__(self, roots: Iterable[PathLike] = (), token: Optional[str] = None):
        # a letter first: the trame client turns URL parameters that read as numbers into numbers
        self.token = token or "od" + secrets.token_urlsafe(32)
        self.roots: List[Path] = []
        for r in roots:
            self.add_root(r)
        self.host = "127.0.0.1"
        self.port: Optional[int] = None

    # ---- folders --------------------------------------------------------------------------------------------------
    def add_root(self, path: PathLike) -> None:
        """Allow browsing ``path`` (a folder, or a file's folder) and everything below it."""
        p = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
        if p.exists() and not p.is_dir():
            p = p.parent
        if p not in self.roots:
            self.roots.append(p)

    def allows_folder(self, path: PathLike) -> bool:
        """True when ``path`` (symbolic links resolved) is one of the roots or lies below one."""
        p = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
        return any(p == r or r in p.parents for r in self.roots)

    # ---- addresses ------------------------------------------------------------------------------------------------
    def url(self, port: int) -> str:
        """The address to print: ``http://HOST:PORT/?token=SECRET``."""
        host = self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{int(port)}/?{urlencode({'token': self.token})}"

    def _host_names(self, local_address: Optional[str]) -> Set[str]:
        names = {_host_key(self.host)}
        if is_loopback(_host_key(self.host)):
            names.update(LOOPBACK_HOSTS)
        if local_address:
            names.add(_host_key(local_address))
        names.discard("0.0.0.0")
        names.discard("::")
        return names

    def host_allowed(self, host_header: Optional[str], local_address: Optional[str] = None) -> bool:
        """Whether a ``Host`` header names the served address (DNS rebinding gives a foreign name). The port is not
        compared: an SSH tunnel may forward another local port."""
        if not host_header:
            return False
        parsed = _split_host_port(host_header, 80)
        return parsed is not None and parsed[0] in self._host_names(local_address)

    def origin_allowed(self, origin: Optional[str], host_header: Optional[str],
                       local_address: Optional[str] = None) -> bool:
        """Whether an ``Origin`` header is the page's own address: the same host and port as the request's ``Host``
        (absent: True; ``null``, another site or another local port: False)."""
        if origin is None:
            return True
        try:
            parts = urlsplit(origin.strip())
            origin_port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname or not host_header:
            return False
        origin_port = origin_port if origin_port is not None else (443 if parts.scheme == "https" else 80)
        host = _split_host_port(host_header, 443 if parts.scheme == "https" else 80)
        return (host is not None and (_host_key(parts.hostname), origin_port) == host
                and host[0] in self._host_names(local_address))

    def token_matches(self, value: Optional[str]) -> bool:
        return bool(value) and hmac.compare_digest(str(value), self.token)

    @staticmethod
    def cookie_name(port: int) -> str:
        """Cookies do not tell ports apart: one name per served port."""
        return f"orthodiffusion-viewer-{int(port)}"

    # ---- serving --------------------------------------------------------------------------------------------------
    def middleware(self):
        """An aiohttp middleware enforcing the rules above on every request (WebSocket upgrades included)."""
        from aiohttp import web

        @web.middleware
        async def guard(request, handler):
            sock = request.transport.get_extra_info("sockname") if request.transport else None
            local, port = (sock[0], int(sock[1])) if sock else (None, self.port or 0)
            host = request.headers.get("Host")
            if not self.host_allowed(host, local):
                return web.Response(status=403, text="OrthoDiffusion viewer: forbidden (unexpected Host header)\n")
            if not self.origin_allowed(request.headers.get("Origin"), host, local):
                return web.Response(status=403, text="OrthoDiffusion viewer: forbidden (foreign Origin)\n")
            if request.method in ("GET", "HEAD") and request.path in PAGE_PATHS:
                token = request.query.get("token")
                if token is not None:
                    if not self.token_matches(token):
                        return web.Response(status=403, text="OrthoDiffusion viewer: wrong token\n")
                    query = {k: v for k, v in request.query.items() if k != "token"}
                    query["secret"] = self.token  # what the trame client presents to wslink.hello
                    response = web.Response(status=302, headers={"Location": f"index.html?{urlencode(query)}"})
                    response.set_cookie(self.cookie_name(port), self.token, httponly=True, samesite="Strict",
                                        path="/")
                    return response
                if not (self.token_matches(request.query.get("secret"))
                        or self.token_matches(request.cookies.get(self.cookie_name(port)))):
                    return web.Response(status=403, text="OrthoDiffusion viewer: open the address printed by "
                                                         "`orthodiffusion view` (it carries the access token)\n")
            return await handler(request)

        return guard

    def install(self, server, host: str) -> None:
        """Hook the rules into a trame server before it starts: its wslink secret becomes :attr:`token`, and the
        middleware is added to its aiohttp application when it binds."""
        self.host = host
        server.cli.set_defaults(authKey=self.token)

        def bind(web_server) -> None:
            app = getattr(web_server, "app", None)
            if app is None:  # pragma: no cover - another backend than aiohttp
                raise RuntimeError("the viewer needs trame's aiohttp backend for its access checks")
            app.middlewares.append(self.middleware())

        server.controller.on_server_bind.add(bind)


__all__ = ["ViewerGuard", "LOOPBACK_HOSTS"]
