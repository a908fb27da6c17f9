"""Logs on a real `tideserve up` with the bundled model served by a real engine process, on SQLite and
PostgreSQL: one request found on both sides (gateway and engine) by its request id and by its session
id, through the API and the CLI; grep, instance and since filters; bad parameters refused; following
(the API and `tideserve logs -f`) sees new requests, through a rotation that leaves older lines
findable."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.controlplane.test_monitoring import CHAT, poll
from tideserve.observability.logs import ENV_MAX_BYTES, ROTATE_EVERY_S
from tideserve.resources.bootstrap import DEFAULT_SERVICE as SERVICE

URL = f"/api/v1/services/{SERVICE}/logs"
LIMIT = 4096  # bytes: a score of requests rotates the engine's log and the gateway's


def chat(c: httpx.Client, rid: str, sid: str | None = None, **extra: Any) -> None:
    headers = {"X-Request-Id": rid, **({"X-Session-Id": sid} if sid else {})}
    r = c.post("/v1/chat/completions", json={**CHAT, **extra}, headers=headers)
    assert r.status_code == 200, r.text


def sides(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        out.setdefault(item["source"], []).append(json.loads(item["line"]))
    return out


def test_logs_search_follow_and_rotation(make_platform, monkeypatch):
    monkeypatch.setenv(ENV_MAX_BYTES, str(LIMIT))
    p = make_platform()
    p.start()
    inst = p.wait_service(SERVICE, timeout=300)["instances"][0]["id"]
    tag = uuid.uuid4().hex[:8]
    rid, sid = f"req-{tag}", f"conv-{tag}"
    with p.client() as c:

        def search(**params: str) -> dict[str, Any]:
            r = c.get(URL, params={"format": "json", **params})
            assert r.status_code == 200, r.text
            return r.json()

        chat(c, rid, sid)
        chat(c, f"{rid}-b", sid, stream=True)  # the same conversation
        # The gateway writes its lines in batches, a fraction of a second late.
        found = poll(lambda: search(request_id=rid), lambda v: len(v["items"]) == 2)
        assert found["sources"] == [inst, "gateway"]
        by = sides(found["items"])
        (engine,), (gw,) = by[inst], by["gateway"]
        assert engine["request_id"] == gw["request_id"] == rid
        assert engine["session_id"] == gw["session_id"] == sid  # the gateway forwarded the session
        assert gw["service"] == SERVICE and gw["instance"] == inst and gw["status"] == 200
        assert engine["finish_reason"] in ("stop", "length") and engine["completion_tokens"] > 0
        assert 0 < engine["ttft_s"] <= engine["e2e_s"]
        assert all(item["time"] for item in found["items"])

        conversation = poll(lambda: search(session_id=sid), lambda v: len(v["items"]) == 4)["items"]
        assert {json.loads(i["line"])["request_id"] for i in conversation} == {rid, f"{rid}-b"}
        assert [i["time"] for i in conversation] == sorted(i["time"] for i in conversation)
        tagged = c.get(URL, params={"request_id": rid}).text.splitlines()
        assert {line.split(" | ", 1)[0] for line in tagged} == {inst, "gateway"}

        ready = c.get(URL, params={"instance": inst, "grep": "READY: SERVING"}).text.splitlines()
        assert len(ready) == 1 and ready[0].endswith(f"ready: serving {SERVICE}")  # one instance: untagged
        latest = search(instance="gateway", lines="1")
        assert latest["sources"] == ["gateway"] and f'"request_id":"{rid}-b"' in latest["items"][0]["line"]
        assert search(request_id=rid, since="2099-01-01T00:00:00Z")["items"] == []
        assert len(search(request_id=rid, since="1h")["items"]) == 2

        for params, field in (
            ({"lines": "0"}, "lines"),
            ({"since": "soon"}, "since"),
            ({"since": "2030-01-01T00:00:00"}, "since"),
            ({"format": "xml"}, "format"),
            ({"grep": ""}, "grep"),
        ):
            r = c.get(URL, params=params)
            assert r.status_code == 422 and r.json()["error"]["message"].startswith(field), r.text
        r = c.get(URL, params={"instance": "nope"})
        assert r.status_code == 404 and "/instances" in r.json()["error"]["message"]
        assert c.get("/api/v1/services/nope/logs").status_code == 404

        out = p.cli("logs", SERVICE, "--request-id", rid).stdout
        assert f"{inst} | " in out and "gateway | " in out and out.count(rid) == 2
        last = p.cli("services", "logs", SERVICE, "--session-id", sid, "--since", "1h", "-n", "1").stdout
        assert last.count("\n") == 1 and f"{rid}-b" in last
        missing = p.cli("logs", SERVICE, "--instance", "nope", check=False)
        assert missing.returncode == 1 and "not found" in missing.stderr
        nothing = p.cli("logs", SERVICE, "--grep", f"nothing like {tag}")
        assert nothing.stdout == "" and "no log lines match" in nothing.stderr

        # Follow the conversation (the API and the CLI), then rotate, then continue it.
        cli = subprocess.Popen(
            [sys.executable, "-m", "tideserve", "logs", SERVICE, "-f", "--session-id", sid, "-n", "1"],
            env=p.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.extend(cli.stdout or ()), daemon=True)
        reader.start()
        params = {"follow": "true", "format": "json", "session_id": sid, "lines": "2"}
        with c.stream("GET", URL, params=params, timeout=httpx.Timeout(60, read=30)) as stream:
            assert stream.headers["content-type"] == "application/x-ndjson"
            lines = (json.loads(line) for line in stream.iter_lines() if line)
            backlog = [next(lines), next(lines)]
            assert {json.loads(i["line"])["request_id"] for i in backlog} == {f"{rid}-b"}
            assert poll(lambda: printed, lambda v: len(v) == 1)  # the CLI's backlog: it is following

            log = p.home / "logs" / SERVICE / f"{inst}.log"
            for i in range(20):
                chat(c, f"bulk-{tag}-{i}")
            assert poll(lambda: Path(f"{log}.1").exists(), bool, timeout=3 * ROTATE_EVERY_S)
            assert (p.home / "logs" / "gateway.log.1").exists()  # the gateway rotates its own
            chat(c, f"{rid}-c", sid)
            new = [next(lines), next(lines)]
        assert {i["source"] for i in new} == {inst, "gateway"}
        assert {json.loads(i["line"])["request_id"] for i in new} == {f"{rid}-c"}
        assert poll(lambda: printed, lambda v: sum(f"{rid}-c" in line for line in v) == 2)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(10) == 0, cli.stderr.read() if cli.stderr else ""

        # The first request's lines now lie in rotated files; searches still find both sides.
        assert {i["source"] for i in search(request_id=rid)["items"]} == {inst, "gateway"}
        assert p.cli("logs", SERVICE, "--request-id", rid).stdout.count(rid) == 2
