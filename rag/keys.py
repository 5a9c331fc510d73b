"""Scoped API keys: who may do what, in which libraries.

A key has a role and the libraries it may use ("*": every library). Roles nest: `read` (search,
ask, page images, similarity maps, list documents, jobs and status) < `write` (also upload,
delete and edit documents) < `admin` (also create and delete libraries, manage keys).

The keys file (JSON, `PAGERAG_KEYS_FILE`, default `PAGERAG_DATA_DIR/keys.json`) is the source:
names, roles, libraries, creation times and a SHA-256 of each key, never a key. `pagerag keys
add` writes it atomically (mode 0600) and a running server re-reads it when it changes. Every
`PAGERAG_API_KEYS` key stays what it was: all libraries, all roles (`EVERYTHING`).

Light imports only (stdlib, rag.config, rag.errors): the CLI's fast paths and the server import it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from rag.config import Settings
from rag.errors import EXIT_CONFIG, UserError

Role = Literal["read", "write", "admin"]
ROLES: tuple[str, ...] = get_args(Role)  # each includes the ones before it
ALL_LIBRARIES = "*"
DEFAULT_LIBRARY = "default"
LIBRARY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_PREFIX = "prk_"  # tells a PageRAG key apart in logs, configs and secret scanners
ENV_NAME = "PAGERAG_API_KEYS"  # the name of every PAGERAG_API_KEYS key, reserved
FILE_VERSION = 1
_FIX = "pagerag keys add NAME --role {role}{libs}"
# What a role is needed for, as words for messages when the caller names no action.
_NEEDED_FOR = {
    "read": "reading",
    "write": "changing documents",
    "admin": "managing libraries and keys",
}
_MAY = {"read": "only read", "write": "read and change documents in", "admin": "administer"}


class Forbidden(UserError):
    """A known key asked for something outside its role or libraries (HTTP 403)."""

    http_status = 403
    # The key in use (a setting: PAGERAG_API_KEY, the UI login) is what must change.
    exit_code = EXIT_CONFIG


class KeyUsageError(UserError):
    """A bad argument to a key command: unknown role, bad name or library (exit 2)."""

    exit_code = 2


class DuplicateKey(KeyUsageError):
    http_status = 409


class UnknownKey(KeyUsageError):
    http_status = 404


class KeysFileError(UserError):
    """The keys file cannot be read or is malformed. The server then lets nobody in with a
    keys-file key (503), only `PAGERAG_API_KEYS` keys, until the file is fixed."""

    http_status = 503
    exit_code = EXIT_CONFIG


def role_includes(have: str, need: str) -> bool:
    """Whether role `have` may do what role `need` may (roles nest)."""
    return ROLES.index(have) >= ROLES.index(need)


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise KeyUsageError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    return role


def check_library_name(name: str) -> str:
    """`name` if it is a valid library name, else a `KeyUsageError` saying what is allowed."""
    if not LIBRARY_NAME.match(name):
        raise KeyUsageError(
            f"{name!r} is not a library name: use 1-40 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit (or '*' for every library)"
        )
    return name


def _libraries(libraries: Iterable[str]) -> tuple[str, ...]:
    """Validated, without duplicates, in the order given; none or '*' among them: ("*",)."""
    names = tuple(dict.fromkeys(lib.strip() for lib in libraries))
    if not names or ALL_LIBRARIES in names:
        return (ALL_LIBRARIES,)
    return tuple(check_library_name(name) for name in names)


def _scope(libraries: tuple[str, ...]) -> str:
    if ALL_LIBRARIES in libraries:
        return "every library"
    quoted = ", ".join(f"'{lib}'" for lib in libraries)
    return f"library {quoted}" if len(libraries) == 1 else f"libraries {quoted}"


def _fix(role: str, library: str) -> str:
    libs = "" if library == ALL_LIBRARIES else f" --library {library}"
    return _FIX.format(role=role, libs=libs)


@dataclass(frozen=True)
class Principal:
    """Who a key is: its name, its role and the libraries it may use ("*": every one)."""

    name: str
    role: str
    libraries: tuple[str, ...]

    def sees(self, library: str) -> bool:
        """Whether this key may use `library` at all. `library="*"` (an action over every
        library, such as managing keys) is seen only by a key for every library."""
        return ALL_LIBRARIES in self.libraries or library in self.libraries

    def allows(self, library: str, role: str) -> bool:
        return self.sees(library) and role_includes(self.role, role)

    def check(self, library: str, role: str, action: str | None = None) -> None:
        """Raise `Forbidden` unless this key may act as `role` in `library`. `action` names
        what was attempted ("uploading", "searching library 'b'") for the message."""
        _check_role(role)
        doing = action or _NEEDED_FOR[role]
        needs = f"needs {'an' if role == 'admin' else 'a'} {role} key"
        may = f"key '{self.name}' may {_MAY[self.role]} {_scope(self.libraries)}"
        if not self.sees(library):
            where = "every library" if library == ALL_LIBRARIES else f"library '{library}'"
            raise Forbidden(
                f"{may}, not {where}; {doing} {needs} for {where} ({_fix(role, library)})"
            )
        if not role_includes(self.role, role):
            raise Forbidden(f"{may}; {doing} {needs} ({_fix(role, library)})")

    def visible(self, names: Iterable[str]) -> list[str]:
        """The libraries among `names` this key may use, in their order."""
        return [name for name in names if self.sees(name)]


# What a PAGERAG_API_KEYS key is, and everyone on a server without keys.
EVERYTHING = Principal(ENV_NAME, "admin", (ALL_LIBRARIES,))


@dataclass(frozen=True)
class KeyInfo:
    """A key as `list_keys` shows it: everything but its hash."""

    name: str
    role: str
    libraries: tuple[str, ...]
    created_at: str  # ISO 8601, UTC

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.libraries)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "libraries": list(self.libraries)}


@dataclass(frozen=True)
class _Entry:
    info: KeyInfo
    digest: bytes  # sha256 of the key


def keys_path(settings: Settings) -> Path:
    """Where the keys file is: PAGERAG_KEYS_FILE, else PAGERAG_DATA_DIR/keys.json."""
    return (settings.keys_file or settings.data_dir / "keys.json").expanduser()


def _digest(token: str) -> bytes:
    # A plain SHA-256 is enough: generated keys carry 256 random bits, so nobody can guess one
    # from its hash, and a slow password hash would only cost time on every request.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _broken(path: Path, why: str) -> KeysFileError:
    return KeysFileError(
        f"the keys file {path} is broken ({why}); fix it, or move it away and add the keys "
        "again with `pagerag keys add` (PAGERAG_KEYS_FILE chooses another file)"
    )


def _parse(path: Path, text: str) -> list[_Entry]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _broken(path, f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise _broken(path, 'expected {"version": 1, "keys": [...]}')
    if data.get("version") != FILE_VERSION:
        raise _broken(path, f"version {data.get('version')!r}, expected {FILE_VERSION}")
    entries: list[_Entry] = []
    seen: set[str] = set()
    for number, item in enumerate(data["keys"], 1):
        try:
            name, role, libs = item["name"], item["role"], item["libraries"]
            if not isinstance(name, str) or not KEY_NAME.match(name) or name == ENV_NAME:
                raise ValueError(f"bad name {name!r}")
            if name in seen:
                raise ValueError(f"the name {name!r} appears twice")
            if not isinstance(libs, list) or not all(isinstance(lib, str) for lib in libs):
                raise ValueError("libraries must be a list of names")
            if not libs:  # never read as "every library": that must be said with "*"
                raise ValueError('libraries is empty; ["*"] means every library')
            digest = bytes.fromhex(item["sha256"])
            if len(digest) != hashlib.sha256().digest_size:
                raise ValueError("sha256 must be 64 hex digits")
            info = KeyInfo(name, _check_role(role), _libraries(libs), str(item["created_at"]))
        except (KeyError, TypeError, ValueError, UserError) as exc:
            what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise _broken(path, f"key #{number}: {what}") from None
        seen.add(name)
        entries.append(_Entry(info, digest))
    return entries


def _read(path: Path) -> list[_Entry]:
    """The entries of the keys file; none when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeError) as exc:
        raise _broken(path, f"cannot be read: {exc}") from None
    return _parse(path, text)


def _write(path: Path, entries: list[_Entry]) -> None:
    """Replace the file atomically (a reader sees the old file or the new one), mode 0600."""
    data = {
        "version": FILE_VERSION,
        "keys": [
            {**e.info.as_json(), "sha256": e.digest.hex()}  # the hash, never the key
            for e in entries
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp creates it 0600
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash only once synced
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialises read-modify-write of the keys file between processes (two `keys add` at
    once must not lose one), with a lock file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; the write itself is still atomic
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def add_key(path: Path, name: str, role: str, libraries: Iterable[str] = ()) -> str:
    """Store a new key named `name` and return it (the only time it is seen). No libraries,
    or '*', means every library."""
    if not KEY_NAME.match(name) or name == ENV_NAME:
        raise KeyUsageError(
            f"{name!r} is not a key name: use 1-64 letters, digits, '.', '-' or '_', starting "
            f"with a letter or digit (not {ENV_NAME})"
        )
    info = KeyInfo(
        name,
        _check_role(role),
        _libraries(libraries),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    key = generate_key()
    with _locked(path):
        entries = _read(path)
        if any(e.info.name == name for e in entries):
            raise DuplicateKey(
                f"a key named {name!r} exists already in {path}: choose another name, or "
                f"`pagerag keys remove {name}` first"
            )
        _write(path, [*entries, _Entry(info, _digest(key))])
    return key


def remove_key(path: Path, name: str) -> KeyInfo:
    """Delete the key named `name`; a running server refuses it from its next request."""
    with _locked(path):
        entries = _read(path)
        kept = [e for e in entries if e.info.name != name]
        if len(kept) == len(entries):
            raise UnknownKey(f"no key named {name!r} in {path}; `pagerag keys list` shows them")
        _write(path, kept)
    return next(e.info for e in entries if e.info.name == name)


def list_keys(path: Path) -> list[KeyInfo]:
    """The stored keys (never their hashes), oldest first."""
    return [e.info for e in _read(path)]


class KeyRing:
    """Every key the server accepts: PAGERAG_API_KEYS (`EVERYTHING`) and the keys file, which
    is re-read whenever it changes (so `pagerag keys add` needs no restart).

    `enabled` is True as soon as there is an environment key or a keys file, even an empty or
    broken one: a keys file that lost its last key, or cannot be read, lets nobody in with it
    rather than opening the server to everyone. Without either, the server is open and every
    caller is `EVERYTHING` (`authenticate`)."""

    def __init__(self, path: Path, env_keys: Iterable[str] = ()) -> None:
        self.path = path
        self._env = tuple(k.encode("utf-8", "surrogatepass") for k in env_keys)
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | bool | None = False  # False: never read
        self._entries: list[_Entry] = []
        self._error: str | None = None  # why the file is broken (a fresh error each time)
        self._current()  # a broken file stops the server from starting

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        return cls(keys_path(settings), settings.api_key_list)

    def _stat(self) -> tuple[int, ...] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return (-1, hash(str(exc)))  # unreadable: `_current` reports why
        # os.replace gives a new inode, so a rewrite within one mtime tick is seen too.
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _current(self) -> list[_Entry]:
        """The file's entries, re-read if it changed since the last look."""
        with self._lock:
            stamp = self._stat()
            if stamp != self._stamp:
                try:
                    self._entries, self._error = _read(self.path), None
                except KeysFileError as exc:
                    self._entries, self._error = [], str(exc)
                self._stamp = stamp
            if self._error is not None:
                raise KeysFileError(self._error)
            return self._entries

    @property
    def enabled(self) -> bool:
        """Whether a key is needed at all (see the class docstring); never raises."""
        return bool(self._env) or self._stat() is not None

    def find(self, token: str) -> Principal | None:
        """Who `token` is, or None. Every stored key is compared, each in constant time, so
        timing tells nothing about which one nearly matched. Raises `KeysFileError` when the
        keys file is broken (only a PAGERAG_API_KEYS key passes then)."""
        given = token.encode("utf-8", "surrogatepass")
        env = False
        for key in self._env:
            env |= hmac.compare_digest(given, key)
        if env:
            return EVERYTHING
        digest = _digest(token)
        found: Principal | None = None
        for entry in self._current():
            if hmac.compare_digest(digest, entry.digest):
                found = entry.info.principal
        return found

    def authenticate(self, token: str | None) -> Principal | None:
        """The caller with this bearer token: `EVERYTHING` on an open server (no keys at
        all), else `find(token)` (None: 401)."""
        if not self.enabled:
            return EVERYTHING
        return self.find(token) if token else None

    def by_name(self, name: str) -> Principal | None:
        """The key named `name` (ENV_NAME: `EVERYTHING` when PAGERAG_API_KEYS is set)."""
        if name == ENV_NAME:
            return EVERYTHING if self._env else None
        return next((e.info.principal for e in self._current() if e.info.name == name), None)

    def stored(self) -> list[KeyInfo]:
        """The keys-file keys as they stand now (no hashes)."""
        return [e.info for e in self._current()]
