"""Who may use orchd-web, and how they prove it.

* **Users** live in a small TOML file (``web.users_file``, default ``web-users.toml`` beside
  orchd.toml), written by ``orchd web passwd NAME --role ROLE`` and ``orchd web remove NAME``:
  a name, a role (``viewer`` reads, ``operator`` also creates, cancels, retries and pauses) and
  an scrypt hash of the password.  A file rather than a table, because the hashes then stay out
  of the database that every worker host (and every run's code on it) can read, it is root's
  and read-only to the sandboxed daemon, configuration management can ship it, and it works
  before any database does.
  The daemon re-reads it when it changes, so a new password needs no restart.
* **The API token** (``Authorization: Bearer ...``): the content of ``web.token_file`` or of the
  systemd credential ``web-password``, with the role ``web.token_role``.
* **Sessions** are Starlette's signed cookie (HttpOnly, SameSite=Lax, Secure behind https).  It
  carries a fingerprint of the user's password hash, so changing a password ends their sessions.

Every secret comparison is constant-time (``hmac.compare_digest``); failed logins are limited
per client address and per user name.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from orchd.config import Config
from orchd.config.model import NAME_PATTERN
from orchd.errors import ConfigError

VIEWER, OPERATOR = "viewer", "operator"
ROLES = (VIEWER, OPERATOR)
TOKEN_CREDENTIAL = "web-password"
#: scrypt cost: 16 MiB and ~50 ms per hash, so a stolen file resists guessing and a login is cheap.
_N, _R, _P = 2**14, 8, 1
_HEADER = "# orchd-web users, written by `orchd web passwd NAME --role viewer|operator`.\n"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encode = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (constant-time; any malformed hash is False)."""
    try:
        kind, n, r, p, salt, digest = encoded.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=256 * 1024 * 1024,
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


#: Spent on unknown user names so their answer takes as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str


@dataclass(frozen=True)
class Principal:
    """Who is making a request: a user, the API token, or anyone (no auth on loopback)."""

    name: str
    role: str
    #: "session", "token" or "anonymous"
    via: str

    @property
    def may_act(self) -> bool:
        return self.role == OPERATOR


def users_path(config: Config) -> Path:
    if config.web.users_file:
        return Path(config.web.users_file)
    if config.path is not None:
        return config.path.parent / "web-users.toml"
    return config.state_dir / "web-users.toml"


def read_users(path: Path) -> dict[str, User]:
    """The users of ``path``; a missing file is no users, a broken one a ConfigError (exit 78)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except PermissionError:
        raise ConfigError(f"{path}: permission denied reading the web users file") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: invalid web users file: {exc}") from None
    users: dict[str, User] = {}
    for name, entry in (data.get("users") or {}).items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: users.{name}: expected a table with role and password")
        role, hashed = entry.get("role"), entry.get("password")
        if role not in ROLES or not isinstance(hashed, str) or not hashed.startswith("scrypt$"):
            raise ConfigError(
                f"{path}: users.{name}: expected role = viewer|operator and an scrypt password hash"
            )
        users[name] = User(name, role, hashed)
    return users


def write_user(path: Path, name: str, role: str, password: str) -> bool:
    """Add or replace a user; True if new."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise ValueError(f"expected a user name of letters, digits, '.', '_', '-', got {name!r}")
    users = read_users(path)
    created = name not in users
    users[name] = User(name, role, hash_password(password))
    _write_users(path, users)
    return created


def remove_user(path: Path, name: str) -> None:
    """Remove a user (their open sessions end with the next request); ValueError naming the
    users there are if there is no such user."""
    users = read_users(path)
    if name not in users:
        known = ", ".join(sorted(users)) or "none"
        raise ValueError(f"no user {name!r} in {path} (users: {known})")
    del users[name]
    _write_users(path, users)


def _write_users(path: Path, users: dict[str, User]) -> None:
    """Replace the file atomically (a reader never sees half of it).  A new file is mode 0640,
    like orchd.toml: root's, readable by the daemons' group; an existing one keeps its mode and
    owner."""
    body = {"users": {u.name: {"role": u.role, "password": u.password_hash} for u in users.values()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    mode, owner = 0o640, None
    if path.exists():
        st = path.stat()
        mode, owner = st.st_mode & 0o777, (st.st_uid, st.st_gid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_HEADER + tomli_w.dumps(body))
        os.chmod(tmp, mode)
        if owner is not None and os.geteuid() == 0:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Users:
    """The users file, re-read when it changes (looked at no more than once a second)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._users: dict[str, User] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        self.reload()

    def reload(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._users, self._stamp = read_users(self.path), stamp

    def current(self) -> dict[str, User]:
        with self._lock:
            if time.monotonic() - self._checked >= 1.0:
                self._checked = time.monotonic()
                # a broken file keeps the last good users (the error was shown at start or by `web passwd`)
                with contextlib.suppress(ConfigError):
                    self.reload()
            return self._users

    def check(self, name: str, password: str) -> User | None:
        user = self.current().get(name)
        ok = verify_password(password, user.password_hash if user else _DUMMY_HASH)
        return user if ok and user is not None else None


def read_token(config: Config, env: dict[str, str] | None = None) -> str | None:
    """The API token: web.token_file, else the credential web-password; None when neither."""
    env = dict(os.environ) if env is None else env
    if config.web.token_file:
        path, origin = Path(config.web.token_file), "web.token_file"
    elif (
        env.get("CREDENTIALS_DIRECTORY") and (Path(env["CREDENTIALS_DIRECTORY"]) / TOKEN_CREDENTIAL).exists()
    ):
        path, origin = Path(env["CREDENTIALS_DIRECTORY"]) / TOKEN_CREDENTIAL, f"credential {TOKEN_CREDENTIAL}"
    else:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{origin}: cannot read {path}: {exc.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"{origin}: {path}: the token must be at least 16 characters")
    return token


def session_secret(config: Config) -> str:
    """The key that signs session cookies: web.session_key_file, created (0600) when missing, so
    logins survive a restart."""
    path = (
        Path(config.web.session_key_file)
        if config.web.session_key_file
        else config.state_dir / "web-session-key"
    )
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w") as out:
        out.write(secret + "\n")
    return secret


class LoginLimiter:
    """At most ``limit`` failed logins per minute per key (client address, user name)."""

    WINDOW = 60.0

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        """Seconds until another try is allowed (0: now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in keys:
                recent = self._recent(key, now)
                if len(recent) >= self.limit:
                    wait = max(wait, recent[0] + self.WINDOW - now)
        return wait

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in keys:
                self._recent(key, now).append(now)
            if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
                for key in [k for k, q in self._failures.items() if not q or q[-1] < now - self.WINDOW]:
                    del self._failures[key]

    def _recent(self, key: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(key, deque())
        while recent and recent[0] <= now - self.WINDOW:
            recent.popleft()
        return recent


class Auth:
    """Everything a request is checked against."""

    def __init__(self, config: Config, env: dict[str, str] | None = None) -> None:
        self.users = Users(users_path(config))
        self.token = read_token(config, env)
        self.token_role = config.web.token_role
        self.secret = session_secret(config)
        self.limiter = LoginLimiter(config.web.login_attempts)
        self.lifetime = int(config.web.session_lifetime)

    @property
    def enabled(self) -> bool:
        """Auth is on as soon as there is a user or a token; until then only loopback is served."""
        return bool(self.token) or bool(self.users.current())

    def bearer(self, presented: str) -> Principal | None:
        if self.token is None:
            return None
        # compare digests: equal lengths, so the comparison time says nothing about the token
        ok = hmac.compare_digest(
            hashlib.sha256(presented.encode()).digest(), hashlib.sha256(self.token.encode()).digest()
        )
        return Principal("api-token", self.token_role, "token") if ok else None

    def fingerprint(self, user: User) -> str:
        """Binds a session to the password it was opened with."""
        mac = hmac.new(self.secret.encode(), user.password_hash.encode(), hashlib.sha256)
        return mac.hexdigest()[:24]

    def from_session(self, session: dict[str, Any]) -> Principal | None:
        name, fingerprint = session.get("user"), session.get("fp")
        if not isinstance(name, str) or not isinstance(fingerprint, str):
            return None
        user = self.users.current().get(name)
        if user is None or not hmac.compare_digest(fingerprint, self.fingerprint(user)):
            return None
        return Principal(user.name, user.role, "session")
