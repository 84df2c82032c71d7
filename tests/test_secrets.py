"""Secrets (the API key, the Redis password) never reach Redis, logs, findings or reports."""

from __future__ import annotations

from tests.harness.fake_api import error_reply, text_reply, tool_use_reply
from tests.harness.swarm import fast_spec, pool

API_KEY = "sk-ant-api03-SECRET-do-not-leak-7f3c9a"


def test_no_secret_reaches_redis_logs_findings_or_reports(make_swarm, fake_api, tmp_path):
    calls = {"n": 0}

    def script(request):
        calls["n"] += 1
        if calls["n"] == 1:
            return tool_use_reply("list_files", {})
        if calls["n"] == 3:
            return error_reply(400, "invalid_request_error", "bad request")
        return text_reply("all good")

    fake_api.script = script
    env = {"ANTHROPIC_BASE_URL": fake_api.url, "ANTHROPIC_API_KEY": API_KEY}
    swarm = make_swarm(fast_spec(pool("a", workers=2, model="claude-haiku-4-5")), env=env)
    swarm.start()
    password = swarm.state.read_redis().password
    assert password and len(password) > 20
    for text in ("one", "two", "three"):
        swarm.cli("submit", text, "--wait", "--timeout", "30")
    seen = fake_api.received()
    assert len(seen) >= 3  # the key did its job: it reached the API, and only the API

    reports = [swarm.cli(*args).stdout + swarm.cli(*args).stderr for args in (
        ("status", "--json"), ("status",), ("cost", "--json"), ("cost", "--csv"),
        ("tasks", "--json"), ("logs",), ("logs", "a-1"), ("logs", "a-2"), ("schema",))]
    task_id = swarm.cli("tasks", "--json").stdout.split('"id": "')[1].split('"')[0]
    reports.append(swarm.cli("show", task_id, "--json").stdout)

    client = swarm.redis()
    stored = []
    for key in client.scan_iter(count=1000):
        stored.append(key)
        kind = client.type(key)
        if kind == "string":
            stored.append(client.get(key) or "")
        elif kind == "hash":
            stored.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            stored.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            stored.extend(client.smembers(key))
        elif kind == "zset":
            stored.extend(m for m, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == "stream":
            stored.extend(str(fields) for _, fields in client.xrange(key))
    assert any(k.startswith("finding:") for k in stored)
    swarm.proc.terminate()
    swarm.proc.wait(15)
    files = [p for p in (swarm.folder / "logs").rglob("*") if p.is_file()]
    files += [swarm.folder / "up.out"] + list((swarm.folder / ".swarm").rglob("*.out"))
    assert len(files) >= 4
    haystacks = {"redis": "\n".join(stored), "reports": "\n".join(reports)}
    haystacks.update({str(p): p.read_text(errors="replace") for p in files})
    for where, text in haystacks.items():
        assert API_KEY not in text, f"the API key leaked into {where}"
        assert password not in text, f"the Redis password leaked into {where}"
    # where the password must live: the 0600 files of the state folder, nowhere else there
    holders = {p.name for p in (swarm.folder / ".swarm").rglob("*")
               if p.is_file() and password in p.read_text(errors="replace")}
    assert holders <= {"redis.pass", "redis.conf"}
