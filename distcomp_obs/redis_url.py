"""Redis URLs as they may be shown and as they are handed to redis-py: `redact_url` (never a
password, whatever the URL's form), `misplaced_at` (a password with an unencoded / ? or # that
breaks the URL), the password file (`with_password_file`, `read_password_file`) and `client_url`
(the URL redis-py gets, the password read from the file put in it). See docs/SECURITY.md.

Imports nothing from the package but errors: config and redis_io use it.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_plus

from distcomp_obs.errors import ConfigError

#: What `redact_url` shows in place of what it cannot show: a password, or a URL it cannot parse.
HIDDEN = "***"
UNPARSEABLE = "<unparseable URL, password hidden>"
#: query options whose values are shown (redis-py's and ours; none carries a secret): any other
#: option's value is hidden, and text that is no `name=value` option is hidden whole
_SHOWN_QUERY_OPTIONS = frozenset({
    "db", "username", "client_name", "protocol", "password_file", "sentinel_auth", "health_check_interval",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "retry_on_timeout", "max_connections",
    "timeout", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers",
})  # fmt: skip
#: the schemes `redact_url` names when the rest of a URL cannot be parsed
_KNOWN_SCHEMES = frozenset({"redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
                            "rediss+sentinel"})  # fmt: skip
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_USERNAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]*")
_OPTION_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def redact_url(url: str) -> str:
    """The URL as logs and errors may show it: never its password, whatever its form.

    - userinfo (`user:password@`, also with unencoded / # ? @ or : in the password: everything up
      to the last @ is userinfo) -> `user:***@`; a userinfo with no `:`, or whose user part is not
      a plain user name, -> `***@` (it may be a password written without the leading colon);
    - the query: the values of known harmless options (db, ssl_ca_certs, password_file, ...) are
      shown, any other option's value (`password=`) is `***`, anything else in it is `***`, and
      nothing after a password option (its value may hold an unencoded &);
    - a fragment -> `#***`;
    - an @ past the host part with an `=` before it (a query value holding an @) -> the scheme
      and `<unparseable URL, password hidden>`: the secret may run past that @;
    - no `scheme://` -> `<unparseable URL, password hidden>` (with the scheme when there is one),
      never the raw text.
    Hosts, ports, paths and the cluster and sentinel host lists are shown as written."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        head = url.partition(":")[0].lower()  # "redis:/host": say which scheme, show nothing else
        return f"{head}://{UNPARSEABLE}" if head in _KNOWN_SCHEMES else UNPARSEABLE
    userinfo, at, after = rest.rpartition("@")
    if "=" in userinfo[_netloc_end(rest) :]:  # an @ in a query value (`?password=a@b`): no telling where it ends
        return f"{scheme}://{UNPARSEABLE}"
    if at:
        user, colon, _ = userinfo.partition(":")
        userinfo = f"{user}:{HIDDEN}@" if colon and _USERNAME.fullmatch(user) else f"{HIDDEN}@"
    after, hash_, _ = after.partition("#")
    location, question, query = after.partition("?")
    if question:
        query = _redact_query(query)
    return f"{scheme}://{userinfo}{location}{question}{query}{'#' + HIDDEN if hash_ else ''}"


def _redact_query(query: str) -> str:
    """The query (after ?, before #) with every value but known harmless ones hidden. A password
    may hold an unencoded & or ;, so after a `...pass...=` option nothing more of it is shown."""
    out: list[str] = []
    parts = re.split(r"([&;])", query)
    for i, part in enumerate(parts):
        name, eq, _ = part.partition("=")
        if part in ("&", ";", "") or (eq and name.lower() in _SHOWN_QUERY_OPTIONS):
            out.append(part)
        elif not eq or not _OPTION_NAME.fullmatch(name):
            out.append(HIDDEN)
        else:
            out.append(f"{name}={HIDDEN}")
            if "pass" in name.lower():
                out.append("&" + HIDDEN if "".join(parts[i + 1 :]) else "")
                break
    return "".join(out)


#: the query option naming a file whose first line is the Redis password (read when connecting);
#: the redis_password_file setting adds it to the URL
PASSWORD_FILE_OPTION = "password_file"
#: what a URL with an @ past its host part should be (ConfigError's expected text)
ENCODE_THE_PASSWORD = (
    "a URL with its password percent-encoded: an unencoded / ? or # in a password ends the host part "
    "early (write / ? # @ in a password as %2F %3F %23 %40, and an @ in the query as %40)"
)


def _netloc_end(rest: str) -> int:
    """Where the host part of `rest` (a URL after its `scheme://`) ends: at its first / ? or #."""
    return min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))


def misplaced_at(url: str) -> bool:
    """Whether an @ follows the end of the URL's host part. A password with an unencoded / ? or #
    ends the host part early, so pieces of it would be read as host, port, path or query (and
    shown in errors as such): such a URL is refused (`ENCODE_THE_PASSWORD`), never guessed at."""
    rest = url.partition("://")[2]
    return "@" in rest[_netloc_end(rest) :]


def read_password_file(path: str) -> str:
    """The Redis password: the first line of the file at `path`, stripped. ConfigError naming
    redis_password_file when the file cannot be read or that line is empty."""
    field = "redis_password_file"
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline(64 * 1024)
    except OSError as exc:
        raise ConfigError(field, path, f"a readable file holding the Redis password ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(field, path, "a UTF-8 text file holding the Redis password") from None
    password = line.strip()
    if not password:
        raise ConfigError(field, path, "a file whose first line is the Redis password (it is empty)")
    return password


def with_password_file(url: str, path: str) -> str:
    """`url` with the option password_file=PATH, in place of one it has; `url` itself when `path`
    is empty or `url` has no `scheme://` (validation names that)."""
    if not path or "://" not in url:
        return url
    base, hash_, fragment = url.partition("#")
    location, question, query = base.partition("?")
    options = [o for o in query.split("&") if o and o.partition("=")[0] != PASSWORD_FILE_OPTION]
    options.append(f"{PASSWORD_FILE_OPTION}={quote(path, safe='/')}")
    return f"{location}?{'&'.join(options)}{hash_}{fragment}"


def client_url(url: str) -> str:
    """The URL to hand redis-py: refused (ConfigError) if an @ follows its host part; with a
    password_file option, the password read from that file now put in its userinfo (any password
    there is replaced; the user name is kept) and the option removed. The result holds the
    password: never log or show it (errors name `url`, redacted)."""
    if misplaced_at(url):
        raise ConfigError("redis_url", redact_url(url), ENCODE_THE_PASSWORD)
    base, hash_, fragment = url.partition("#")
    location, question, query = base.partition("?")
    options = query.split("&") if question else []
    paths = [unquote_plus(o.partition("=")[2]) for o in options if o.partition("=")[0] == PASSWORD_FILE_OPTION]
    if not paths:
        return url
    password = read_password_file(paths[-1])
    options = [o for o in options if o and o.partition("=")[0] != PASSWORD_FILE_OPTION]
    scheme, _, rest = location.partition("://")
    end = _netloc_end(rest)
    userinfo, _, hosts = rest[:end].rpartition("@")
    user = userinfo.partition(":")[0]
    query = f"?{'&'.join(options)}" if options else ""
    return f"{scheme}://{user}:{quote(password, safe='')}@{hosts}{rest[end:]}{query}{hash_}{fragment}"
