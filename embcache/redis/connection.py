"""Connection settings: URL schemes, passwords kept out of reprs, errors and ``ps``.

- :func:`normalize_url` accepts ``valkey://`` and ``valkeys://`` (Valkey speaks the Redis protocol) and gives
  redis-py the ``redis://`` / ``rediss://`` it understands.
- :func:`redact_url` replaces a password in a URL by ``***``: what reprs and log lines show.
- :func:`env_credentials` reads ``EMBCACHE_USERNAME`` and ``EMBCACHE_PASSWORD`` or ``EMBCACHE_PASSWORD_FILE``
  (environment variables are not shown by ``ps``; a command-line password is).
- :func:`read_password_file` reads a password from a file (``--password-file``, ``EMBCACHE_PASSWORD_FILE``).
"""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..core.errors import InvalidInput

__all__ = ["SCHEMES", "normalize_url", "check_url", "url_username", "redact_url", "url_scheme", "env_credentials",
           "read_password_file"]

SCHEMES = ("redis://", "rediss://", "unix://", "valkey://", "valkeys://")
_ALIASES = {"valkey://": "redis://", "valkeys://": "rediss://"}
MAX_PASSWORD_FILE_BYTES = 4096
_SECRET_PARAMS = {"password"}


def url_scheme(url: object) -> str:
    """The scheme of ``url`` for an error message, never any other part of it (which may hold a password)."""
    if not isinstance(url, str):
        return f"(a {type(url).__name__}, not a string)"
    scheme, sep, _ = url.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,15}", scheme):
        return f"{scheme}://"
    return "(no scheme)"


def normalize_url(url: object) -> str:
    """``url`` as redis-py takes it; :class:`InvalidInput` (naming only the scheme) for any other scheme."""
    if not isinstance(url, str) or not url.startswith(SCHEMES):
        raise InvalidInput(f"url must start with one of {', '.join(SCHEMES)}; got {url_scheme(url)}")
    for alias, scheme in _ALIASES.items():
        if url.startswith(alias):
            return scheme + url[len(alias):]
    return url


def check_url(url: str) -> None:
    """:class:`InvalidInput` for a URL redis-py cannot use (bad port, bracket, query option, protocol, TLS
    option), found without connecting; the message never holds the password."""
    import redis

    try:
        pool = redis.ConnectionPool.from_url(url)
        pool.make_connection()  # builds the connection object only: it validates the options, opens no socket
        pool.disconnect()
    except (ValueError, TypeError, redis.RedisError) as exc:
        raise InvalidInput(f"url {redact_url(url)!r} is malformed: {_scrub(str(exc), url)}") from None


def url_username(url: str) -> str | None:
    """The user named in ``url`` (``redis://user:pw@host``), if any."""
    try:
        return urlsplit(url).username or None
    except ValueError:
        return None


def _scrub(text: str, url: str) -> str:
    """``text`` without any secret of ``url`` in it."""
    secrets = re.findall(r"//[^/@]*?:([^@/]+)@", url) + re.findall(r"[?&]password=([^&]+)", url, flags=re.I)
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query parameter) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        out = url
        if "@" in parts.netloc:
            userinfo, _, hostport = parts.netloc.rpartition("@")
            user, sep, _pw = userinfo.partition(":")
            if sep:
                out = out.replace(f"//{parts.netloc}", f"//{user}:***@{hostport}", 1)
        if parts.query:
            pairs = parse_qsl(parts.query, keep_blank_values=True)
            if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs], safe="*/")
                out = out.replace(f"?{parts.query}", f"?{query}", 1)
        return out
    except ValueError:  # not parseable: show nothing that might be a secret
        return url_scheme(url) + "..."
    # (a URL urlsplit takes but redis-py refuses is caught by check_url)


def read_password_file(path: str | os.PathLike[str]) -> str:
    """The password in ``path``: its first line without the line break. :class:`InvalidInput` if the file
    cannot be read, is larger than 4 KiB or holds no password."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PASSWORD_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read the password file {os.fspath(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_PASSWORD_FILE_BYTES:
        raise InvalidInput(f"the password file {os.fspath(path)!r} is larger than {MAX_PASSWORD_FILE_BYTES} bytes")
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise InvalidInput(f"the password file {os.fspath(path)!r} holds no password on its first line")
    try:
        return line.decode()
    except UnicodeDecodeError:
        raise InvalidInput(f"the password file {os.fspath(path)!r} is not UTF-8") from None


def env_credentials(prefix: str = "EMBCACHE") -> tuple[str | None, str | None]:
    """``(username, password)`` from ``{prefix}_USERNAME`` and ``{prefix}_PASSWORD`` (or, when that is unset,
    the file named by ``{prefix}_PASSWORD_FILE``); None for what is not set."""
    username = os.environ.get(f"{prefix}_USERNAME") or None
    password = os.environ.get(f"{prefix}_PASSWORD") or None
    if password is None and os.environ.get(f"{prefix}_PASSWORD_FILE"):
        password = read_password_file(os.environ[f"{prefix}_PASSWORD_FILE"])
    return username, password
