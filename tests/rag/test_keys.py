"""Scoped keys (issue 14): the keys file, the key ring a server checks callers against, the
403 messages, and `pagerag keys` through typer's runner. Real files in tmp_path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.cli import app
from rag.config import Settings
from rag.errors import UserError
from rag.keys import (
    EVERYTHING,
    ROLES,
    DuplicateKey,
    Forbidden,
    KeyRing,
    KeysFileError,
    KeyUsageError,
    Principal,
    UnknownKey,
    add_key,
    keys_path,
    list_keys,
    remove_key,
)

runner = CliRunner()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "keys.json"


def test_keys_file_holds_hashes_only_mode_0600(path: Path) -> None:
    key = add_key(path, "team-a-reader", "read", ["a"])
    assert key.startswith("prk_") and len(key) > 40
    text = path.read_text()
    assert key not in text and key.removeprefix("prk_") not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["name"] == "team-a-reader" and entry["role"] == "read"
    assert entry["libraries"] == ["a"] and entry["created_at"].endswith("+00:00")
    assert len(entry["sha256"]) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    add_key(path, "ops", "admin")  # rewritten: still 0600, no temp file left behind
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]


def test_ring_finds_keys_by_token_and_name(path: Path) -> None:
    reader = add_key(path, "team-a-reader", "read", ["a"])
    writer = add_key(path, "ab-writer", "write", ["a", "b", "a"])
    admin = add_key(path, "ops", "admin", [])
    ring = KeyRing(path, ["env-secret"])
    assert ring.enabled
    assert ring.find(reader) == Principal("team-a-reader", "read", ("a",))
    assert ring.find(writer) == Principal("ab-writer", "write", ("a", "b"))
    assert ring.find(admin) == Principal("ops", "admin", ("*",))
    assert ring.find("env-secret") is EVERYTHING
    assert ring.find(reader + "x") is None and ring.find("") is None
    assert ring.find("env-secre") is None
    assert ring.by_name("ab-writer") == ring.find(writer)
    assert ring.by_name("PAGERAG_API_KEYS") is EVERYTHING
    assert ring.by_name("nobody") is None
    assert [k.name for k in ring.stored()] == ["team-a-reader", "ab-writer", "ops"]
    assert KeyRing(path).by_name("PAGERAG_API_KEYS") is None  # no environment keys


def test_from_settings_env_keys_and_an_open_server(tmp_path: Path) -> None:
    open_ring = KeyRing.from_settings(Settings(data_dir=tmp_path))
    assert not open_ring.enabled and open_ring.find("anything") is None
    assert open_ring.authenticate(None) is EVERYTHING  # no keys at all: everyone is admin
    env = KeyRing.from_settings(Settings(data_dir=tmp_path, api_keys=" k1 , k2 "))
    assert env.enabled and env.find("k2") is EVERYTHING and env.authenticate(None) is None
    assert env.path == tmp_path / "keys.json"
    elsewhere = Settings(data_dir=tmp_path, keys_file=tmp_path / "etc" / "k.json")
    assert keys_path(elsewhere) == tmp_path / "etc" / "k.json"
    key = add_key(keys_path(elsewhere), "svc", "write", ["default"])
    assert KeyRing.from_settings(elsewhere).authenticate(key) == Principal(
        "svc", "write", ("default",)
    )


def test_roles_and_libraries(path: Path) -> None:
    assert ROLES == ("read", "write", "admin")
    reader = Principal("r", "read", ("a",))
    writer = Principal("w", "write", ("a", "b"))
    admin_a = Principal("adm", "admin", ("a",))
    reader.check("a", "read")
    writer.check("b", "read")
    writer.check("b", "write")
    admin_a.check("a", "admin")  # delete library a
    EVERYTHING.check("anything", "admin")
    EVERYTHING.check("*", "admin")  # manage keys
    assert reader.sees("a") and not reader.sees("b") and not reader.sees("*")
    assert EVERYTHING.sees("zzz") and EVERYTHING.sees("*")
    assert writer.visible(["default", "b", "a", "c"]) == ["b", "a"]
    assert EVERYTHING.visible(["default", "b"]) == ["default", "b"]
    assert reader.allows("a", "read") and not reader.allows("a", "write")
    for who, library, role in [
        (reader, "a", "write"),
        (reader, "b", "read"),
        (writer, "a", "admin"),
        (writer, "c", "read"),
        (admin_a, "*", "admin"),  # keys are managed by an admin of every library only
        (admin_a, "b", "read"),
    ]:
        with pytest.raises(Forbidden):
            who.check(library, role)
    with pytest.raises(KeyUsageError, match="unknown role 'owner'"):
        reader.check("a", "owner")


def test_forbidden_messages_give_the_reason_and_the_fix() -> None:
    reader = Principal("team-a-reader", "read", ("a",))
    with pytest.raises(Forbidden) as caught:
        reader.check("a", "write", "uploading")
    assert str(caught.value) == (
        "key 'team-a-reader' may only read library 'a'; uploading needs a write key "
        "(pagerag keys add NAME --role write --library a)"
    )
    assert caught.value.http_status == 403 and isinstance(caught.value, UserError)
    assert caught.value.exit_code == 3
    with pytest.raises(Forbidden) as caught:
        reader.check("b", "read", "searching")
    assert str(caught.value) == (
        "key 'team-a-reader' may only read library 'a', not library 'b'; searching needs a "
        "read key for library 'b' (pagerag keys add NAME --role read --library b)"
    )
    with pytest.raises(Forbidden) as caught:
        Principal("w", "write", ("a", "b")).check("*", "admin")
    assert str(caught.value) == (
        "key 'w' may read and change documents in libraries 'a', 'b', not every library; "
        "managing libraries and keys needs an admin key for every library "
        "(pagerag keys add NAME --role admin)"
    )


def test_ring_rereads_the_file_when_it_changes(path: Path) -> None:
    ring = KeyRing(path)
    assert not ring.enabled  # no file yet
    key = add_key(path, "late", "read", ["a"])
    assert ring.enabled and ring.find(key) == Principal("late", "read", ("a",))
    other = add_key(path, "later", "write")
    assert ring.find(other) == Principal("later", "write", ("*",))
    remove_key(path, "late")
    assert ring.find(key) is None and ring.by_name("late") is None
    remove_key(path, "later")
    # The file remains, empty: nobody gets in with it rather than everyone.
    assert ring.enabled and ring.find(other) is None and ring.authenticate(None) is None
    path.unlink()  # a deliberate removal opens the server again
    assert not ring.enabled and ring.authenticate(None) is EVERYTHING


def test_broken_file_fails_closed(path: Path) -> None:
    key = add_key(path, "svc", "read")
    ring = KeyRing(path, ["env-secret"])
    assert ring.find(key) is not None
    good = path.read_text()
    path.write_text(good.replace('"keys"', '"kees"'))
    with pytest.raises(KeysFileError) as caught:
        ring.find(key)
    message = str(caught.value)
    assert str(path) in message and "pagerag keys add" in message and "PAGERAG_KEYS_FILE" in message
    assert caught.value.http_status == 503 and caught.value.exit_code == 3
    assert ring.enabled  # still locked, and only the environment's keys pass
    assert ring.find("env-secret") is EVERYTHING
    with pytest.raises(KeysFileError):
        ring.authenticate(key)
    with pytest.raises(KeysFileError):
        ring.by_name("svc")
    with pytest.raises(KeysFileError):  # a server does not start on it
        KeyRing(path)
    for broken, why in [
        ("{not json", "not JSON"),
        ('{"version": 2, "keys": []}', "version 2"),
        ('{"version": 1, "keys": [{"name": "x"}]}', "key #1: missing 'role'"),
        (good.replace('"read"', '"owner"'), "unknown role 'owner'"),
        (good.replace('"*"', '"Bad Name"'), "not a library name"),
        (good.replace('"*"', ""), "libraries is empty"),
    ]:
        path.write_text(broken)
        with pytest.raises(KeysFileError, match=why):
            ring.find(key)
        with pytest.raises(KeysFileError):  # and adding refuses to overwrite it
            add_key(path, "new", "read")
    path.write_text(good)  # fixed: works again without a restart
    assert ring.find(key) == Principal("svc", "read", ("*",))


def test_add_refuses_bad_input(path: Path) -> None:
    add_key(path, "svc", "read")
    with pytest.raises(DuplicateKey, match="exists already"):
        add_key(path, "svc", "write")
    with pytest.raises(KeyUsageError, match="unknown role 'owner'"):
        add_key(path, "x", "owner")
    with pytest.raises(KeyUsageError, match="not a library name"):
        add_key(path, "x", "read", ["Team A"])
    for name in ["", "-x", "a b", "PAGERAG_API_KEYS", "x" * 65]:
        with pytest.raises(KeyUsageError, match="not a key name"):
            add_key(path, name, "read")
    with pytest.raises(UnknownKey, match="no key named 'ghost'"):
        remove_key(path, "ghost")
    assert [k.name for k in list_keys(path)] == ["svc"]
    assert list_keys(path.with_name("none.json")) == []


def _env(path: Path) -> dict[str, str]:
    return {"PAGERAG_DATA_DIR": str(path.parent), "PAGERAG_KEYS_FILE": str(path)}


def test_cli_add_list_remove(path: Path) -> None:
    env = _env(path)
    added = runner.invoke(
        app, ["keys", "add", "team-a-reader", "--role", "read", "--library", "a"], env=env
    )
    assert added.exit_code == 0, added.output
    key = added.stdout.strip()
    assert key.startswith("prk_") and "\n" not in key
    assert "only time it is shown" in added.stderr
    assert KeyRing(path).find(key) == Principal("team-a-reader", "read", ("a",))
    assert runner.invoke(app, ["keys", "add", "ops", "--role", "admin"], env=env).exit_code == 0

    listed = runner.invoke(app, ["keys", "list", "--json"], env=env)
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["role"], r["libraries"]) for r in rows] == [
        ("team-a-reader", "read", ["a"]),
        ("ops", "admin", ["*"]),
    ]
    digests = [e["sha256"] for e in json.loads(path.read_text())["keys"]]
    table = runner.invoke(app, ["keys", "list"], env={**env, "PAGERAG_API_KEYS": "k"})
    assert table.exit_code == 0 and "team-a-reader" in table.stdout
    assert "every library" in table.stdout and "1 PAGERAG_API_KEYS key" in table.stdout
    for shown in (listed.output, table.output):
        assert key not in shown and not any(d in shown or d[:12] in shown for d in digests)
        assert "sha256" not in shown

    duplicate = runner.invoke(app, ["keys", "add", "ops"], env=env)
    assert duplicate.exit_code == 2 and "exists already" in duplicate.stderr
    assert duplicate.stdout == ""
    bad_role = runner.invoke(app, ["keys", "add", "x", "--role", "owner"], env=env)
    assert bad_role.exit_code == 2
    bad_library = runner.invoke(app, ["keys", "add", "x", "--library", "B"], env=env)
    assert bad_library.exit_code == 2 and "not a library name" in bad_library.stderr

    removed = runner.invoke(app, ["keys", "remove", "team-a-reader"], env=env)
    assert removed.exit_code == 0 and "removed key 'team-a-reader'" in removed.stdout
    assert KeyRing(path).find(key) is None
    missing = runner.invoke(app, ["keys", "remove", "team-a-reader"], env=env)
    assert missing.exit_code == 2 and "no key named" in missing.stderr
    last = runner.invoke(app, ["keys", "remove", "ops"], env=env)
    assert last.exit_code == 0 and "refuses every API call" in last.stderr
    empty = runner.invoke(app, ["keys", "list"], env=env)
    assert empty.exit_code == 0 and "no keys in" in empty.stdout


def test_cli_broken_file_exits_3(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text("[]")
    result = runner.invoke(app, ["keys", "list"], env=_env(path))
    assert result.exit_code == 3 and str(path) in result.stderr.replace("\n", "")
    assert os.path.exists(path) and path.read_text() == "[]"
