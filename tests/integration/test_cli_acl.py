"""``embcache grant|revoke|principals|rotate|worker-principal``: called through ``embcache.cli.main`` against a
real Redis, checking what they print and that the printed credentials work (and only as far as granted)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from redis.exceptions import AuthenticationError, NoPermissionError

import embcache
from embcache.cli import main
from embcache.core.keys import Keys
from tests.integration.test_acl import no_aclfile_url  # noqa: F401 - fixture

K = Keys()


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    """Spaces ``alpha`` (partitions p1, p2 of v1) and ``bravo`` (v1/default)."""
    with embcache.connect(redis_url, refresh_interval=0.1) as op:
        v = op.create_space("alpha", dim=4, metric="l2").create_version()
        v.upsert(["x1"], np.eye(4, dtype=np.float32)[:1], partition="p1")
        v.upsert(["y1"], np.eye(4, dtype=np.float32)[1:2], partition="p2")
        op.create_space("bravo", dim=4, metric="l2").create_version().upsert(["q1"], np.eye(4, dtype=np.float32)[:1])
    yield redis_url


def cli(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--url", url, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def field(text: str, name: str) -> str:
    m = re.search(rf"^{name}: (\S+)$", text, re.M)
    assert m, f"no '{name}:' line in:\n{text}"
    return m.group(1)


def works(url: str, user: str, password: str) -> bool:
    try:
        with redis.Redis.from_url(url, username=user, password=password) as r:
            return bool(r.ping())
    except AuthenticationError:
        return False


def test_grant_prints_the_password_once_and_it_works(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, url, "grant", "alice", "--space", "alpha", "--role", "writer",
                         "--partition", "p1", "--partition", "p3")
    assert code == 0, err
    assert "granted writer on space alpha (partitions p1, p3) to alice" in out
    assert field(out, "username") == "alice"
    password = field(out, "password")
    assert len(password) >= 40 and "shown only this once" in out
    assert err == ""  # the session server has an ACL file: no warning
    with embcache.connect(url, username="alice", password=password, refresh_interval=0.1) as h:
        v = h.space("alpha").version("v1")
        v.upsert(["n1"], np.ones((1, 4), np.float32), partition="p1")
        assert v.get(["x1", "y1", "n1"]).ids == ["x1", "n1"]
        with pytest.raises(embcache.PermissionDenied):
            v.upsert(["n2"], np.ones((1, 4), np.float32), partition="p2")
    with redis.Redis.from_url(url, username="alice", password=password) as r, pytest.raises(NoPermissionError):
        r.hget(K.partition("alpha", "v1", "p2").vec, "y1")
    # a second grant keeps the secret: no password is printed
    code, out, err = cli(capsys, url, "grant", "alice", "--space", "bravo")
    assert code == 0, err
    assert "granted reader on space bravo to alice" in out
    assert "password: (unchanged" in out and password not in out
    with redis.Redis.from_url(url, username="alice", password=password) as r:
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None


def test_grant_json(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, url, "--json", "grant", "bob", "--space", "alpha", "--role", "admin")
    assert code == 0, err
    data = json.loads(out)
    assert data["username"] == "bob" and data["role"] == "admin" and data["space"] == "alpha"
    assert data["partitions"] is None and data["persisted"] is True
    assert works(url, "bob", data["password"])


def test_grant_warns_when_the_server_cannot_persist_it(no_aclfile_url: str,  # noqa: F811
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with embcache.connect(no_aclfile_url, refresh_interval=0.1) as op:
        op.create_space("alpha", dim=4)
    code, out, err = cli(capsys, no_aclfile_url, "grant", "carol", "--space", "alpha")
    assert code == 0
    assert works(no_aclfile_url, "carol", field(out, "password"))
    assert "warning" in err and "no ACL file" in err and "carol" in err
    code, out, err = cli(capsys, no_aclfile_url, "rotate", "carol")
    assert code == 0 and "warning" in err
    code, out, err = cli(capsys, no_aclfile_url, "worker-principal")
    assert code == 0 and "warning" in err


def test_principals_lists_grants_never_secrets(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, url, "principals")[1].strip() == "(none)"
    _, out1, _ = cli(capsys, url, "grant", "alice", "--space", "alpha", "--role", "writer", "--partition", "p1")
    cli(capsys, url, "grant", "alice", "--space", "bravo")
    _, out2, _ = cli(capsys, url, "grant", "dave", "--space", "alpha", "--role", "admin")
    _, out3, _ = cli(capsys, url, "worker-principal")
    code, out, err = cli(capsys, url, "principals")
    assert code == 0, err
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines[0] == ["principal", "kind", "space", "role", "partitions"]
    assert lines[2:] == [["alice", "client", "alpha", "writer", "p1"], ["alice", "client", "bravo", "reader", "*"],
                         ["dave", "client", "alpha", "admin", "*"], ["worker", "worker", "*", "worker"]]
    for secret in (field(out1, "password"), field(out2, "password"), field(out3, "password")):
        assert secret not in out
    code, out, _ = cli(capsys, url, "--json", "principals")
    data = json.loads(out)
    assert data["alice"]["grants"] == {"alpha": {"role": "writer", "partitions": ["p1"]},
                                       "bravo": {"role": "reader", "partitions": None}}
    assert data["worker"]["worker"] is True and "hash" not in json.dumps(data)


def test_rotate_prints_a_new_password(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, url, "grant", "alice", "--space", "alpha")
    old = field(out, "password")
    code, out, err = cli(capsys, url, "rotate", "alice")
    assert code == 0, err
    assert "new password for alice" in out
    new = field(out, "password")
    assert new != old and works(url, "alice", new) and not works(url, "alice", old)
    code, out, err = cli(capsys, url, "--json", "rotate", "alice")
    assert code == 0 and works(url, "alice", json.loads(out)["password"]) and not works(url, "alice", new)


def test_revoke_a_space_then_the_principal(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = cli(capsys, url, "grant", "alice", "--space", "alpha")
    password = field(out, "password")
    cli(capsys, url, "grant", "alice", "--space", "bravo")
    code, out, err = cli(capsys, url, "revoke", "alice", "--space", "alpha")
    assert code == 0, err
    assert "revoked alice's grant on space alpha" in out and "principal deleted" not in out
    with redis.Redis.from_url(url, username="alice", password=password) as r:
        with pytest.raises(NoPermissionError):
            r.hget(K.partition("alpha", "v1", "p1").vec, "x1")
        assert r.hget(K.partition("bravo", "v1", "default").vec, "q1") is not None
    code, out, err = cli(capsys, url, "revoke", "alice")
    assert code == 0 and "deleted principal alice" in out
    assert not works(url, "alice", password)
    # revoking the last grant deletes the principal, and says so
    _, out, _ = cli(capsys, url, "grant", "bob", "--space", "alpha")
    code, out, err = cli(capsys, url, "--json", "revoke", "bob", "--space", "alpha")
    assert code == 0 and json.loads(out) == {"principal": "bob", "space": "alpha", "deleted": True}
    code, out, err = cli(capsys, url, "revoke", "alice")
    assert code == 1 and "NotFound" in err


def test_worker_principal_prints_its_credentials(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, url, "worker-principal")
    assert code == 0, err
    assert "EMBCACHE_QUEUE_USERNAME" in out and field(out, "username") == "worker"
    password = field(out, "password")
    with redis.Redis.from_url(url, username="worker", password=password) as r:
        assert r.llen("rq:queue:embcache") == 0  # RQ's keys are the worker's
    code, out, err = cli(capsys, url, "worker-principal", "--name", "builder")
    assert code == 0 and field(out, "username") == "builder"
    assert not works(url, "worker", field(out, "password")) and works(url, "worker", password)


def test_errors_exit_1_with_a_message(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, url, "grant", "bad name", "--space", "alpha")
    assert code == 1 and "InvalidName" in err
    code, _, err = cli(capsys, url, "grant", "alice", "--space", "alpha", "--partition", "p*")
    assert code == 1 and "InvalidName" in err
    code, _, err = cli(capsys, url, "grant", "alice", "--space", "nope")
    assert code == 1 and "NotFound" in err
    code, _, err = cli(capsys, url, "rotate", "nobody")
    assert code == 1 and "NotFound" in err
    with pytest.raises(SystemExit) as exc:
        main(["--url", url, "grant", "alice", "--space", "alpha", "--role", "owner"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--url", url, "grant", "alice"])  # --space is required
    # a principal cannot manage principals, even an admin of the space
    _, out, _ = cli(capsys, url, "grant", "dave", "--space", "alpha", "--role", "admin")
    creds = ["--username", "dave", "--password", field(out, "password")]
    for argv in (["grant", "eve", "--space", "alpha", "--role", "admin"], ["principals"], ["rotate", "dave"],
                 ["revoke", "dave"], ["worker-principal"]):
        code, _, err = cli(capsys, url, *creds, *argv)
        assert code == 1 and "PermissionDenied" in err, (argv, err)
