"""The main job end to end, with real engine processes: `tideserve up` serves the bundled model,
updates roll out, crashes restart, deletes are graceful, and a control-plane crash loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import yaml

from tests.controlplane.conftest import engine_processes

CHAT = {
    "model": "smollm2-135m-instruct",
    "messages": [{"role": "user", "content": "What is 2+2?"}],
    "max_tokens": 8,
}


def test_up_serves_the_bundled_model_then_ctrl_c_stops_everything(make_platform):
    p = make_platform()
    p.start()
    assert (p.home / "admin.key").stat().st_mode & 0o777 == 0o600
    banner = p.log.read_text()
    assert "curl" in banner and "/v1/chat/completions" in banner
    svc = p.wait_service("smollm2-135m-instruct")
    assert svc["replicas"] == {"ready": 1, "desired": 1}
    with p.client() as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert r.json()["model"] == "smollm2-135m-instruct"
        # streaming passes through unchanged
        with c.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert c.get("/v1/models").json()["data"][0]["id"] == "smollm2-135m-instruct"
        nodes = c.get("/api/v1/nodes").json()
        assert nodes[0]["group"] == "default" and nodes[0]["cluster"] == "local"
        assert nodes[0]["cpus"] == psutil.cpu_count() and nodes[0]["instances"]
    engines = engine_processes(p.home)
    assert len(engines) == 1
    assert p.stop(signal.SIGINT) == 0
    assert not any(e.is_running() and e.status() != psutil.STATUS_ZOMBIE for e in engines)
    # The second start re-deploys the service (Ctrl-C stopped its instance) without creating it twice.
    p.start()
    p.wait_service("smollm2-135m-instruct")
    with p.client() as c:
        assert [s["name"] for s in c.get("/api/v1/services").json()] == ["smollm2-135m-instruct"]
    out = subprocess.run(
        [sys.executable, "-m", "tideserve", "down"], env=p.env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "stopped" in out.stdout
    assert p.proc is not None and p.proc.wait(10) == 0
    assert engine_processes(p.home) == []


def _service(name: str, replicas: int = 1, **spec) -> dict:
    return {
        "metadata": {"name": name},
        "spec": {
            "model": "smollm2-135m-instruct",
            "cluster": "local",
            "resourceGroup": "default",
            "replicas": replicas,
            "resources": {"cpu": 0.5, "memory": "1Gi", "gpus": 0},
            "parameters": {"maxModelLen": 2048, "maxBatchSize": 8},
            **spec,
        },
    }


def _watch_states(p, name: str, stop: threading.Event, seen: list) -> None:
    with p.client() as c:
        while not stop.is_set():
            r = c.get(f"/api/v1/services/{name}/instances")
            if r.status_code == 200:
                seen.append([(i["id"], i["revision"], i["state"]) for i in r.json()])
            time.sleep(0.1)


def test_update_rolls_out_new_instance_before_the_old_drains(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        assert c.post("/api/v1/services", json=_service("roll")).status_code == 201
        first = p.wait_service("roll")["instances"][0]
        seen: list = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_states, args=(p, "roll", stop, seen))
        watcher.start()
        r = c.put("/api/v1/services/roll", json=_service("roll", env={"GREETING": "hello"}))
        assert r.status_code == 200 and r.json()["result"] == "rolled out" and r.json()["revision"] == 2
        # Requests keep being answered throughout the rollout.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert c.post("/v1/chat/completions", json={**CHAT, "model": "roll"}).status_code == 200
            svc = c.get("/api/v1/services/roll").json()
            if svc["status"] == "Running" and [i["revision"] for i in svc["instances"]] == [2]:
                break
        stop.set()
        watcher.join()
        assert svc["instances"][0]["id"] != first["id"]
        # The old instance only left Running once a revision-2 instance was Running.
        for snapshot in seen:
            old_running = any(rev == 1 and st == "Running" for _, rev, st in snapshot)
            new_running = any(rev == 2 and st == "Running" for _, rev, st in snapshot)
            assert old_running or new_running, snapshot
        # Scaling changes no revision and does not touch the running instance.
        rolled = svc["instances"][0]["id"]
        r = c.put("/api/v1/services/roll", json=_service("roll", replicas=2, env={"GREETING": "hello"}))
        assert r.json()["result"] == "updated" and r.json()["revision"] == 2
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            svc = c.get("/api/v1/services/roll").json()
            if [i["state"] for i in svc["instances"]] == ["Running", "Running"]:
                break
            time.sleep(0.2)
        assert len(svc["instances"]) == 2 and rolled in {i["id"] for i in svc["instances"]}
        assert {i["revision"] for i in svc["instances"]} == {2}
        # A rolling restart replaces every instance, one at a time.
        before = {i["id"] for i in svc["instances"]}
        assert c.post("/api/v1/services/roll/restart").json()["revision"] == 3
        time.sleep(0.5)
        svc = p.wait_service("roll", timeout=180)
        assert {i["id"] for i in svc["instances"]}.isdisjoint(before)
        assert {i["revision"] for i in svc["instances"]} == {3}


def test_crashing_instance_restarts_with_backoff(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        c.post("/api/v1/services", json=_service("crashy"))
        inst = p.wait_service("crashy")["instances"][0]
        os.kill(inst["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = c.get("/api/v1/services/crashy").json()["instances"][0]
            if now["restarts"] == 1 and now["state"] == "Running":
                break
            time.sleep(0.2)
        assert now["id"] == inst["id"] and now["pid"] != inst["pid"] and now["restarts"] == 1
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "crashy"}).status_code == 200


def test_an_instance_that_keeps_failing_makes_the_service_abnormal(make_platform, tmp_path):
    p = make_platform()
    p.start("--no-default")
    model_dir = tmp_path / "tiny"
    model_dir.mkdir()
    # A real HF config the engine accepts, whose weights vanish after registration: every start fails.
    (model_dir / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 256,
                "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0,
                "tie_word_embeddings": True,
            }
        )
    )
    import torch
    from safetensors.torch import save_file

    save_file({"model.embed_tokens.weight": torch.zeros(256, 64)}, str(model_dir / "model.safetensors"))
    from tideserve.engine.loader import resolve

    shutil.copy(resolve("smollm2-135m-instruct") / "tokenizer.json", model_dir)
    with p.client() as c:
        r = c.post("/api/v1/models", json={"name": "tiny", "source": str(model_dir)})
        assert r.status_code == 201, r.text
        (model_dir / "model.safetensors").unlink()
        assert (
            c.post(
                "/api/v1/services",
                json={
                    **_service("broken"),
                    "spec": {
                        **_service("broken")["spec"],
                        "model": "tiny",
                        "parameters": {"maxModelLen": 2048},
                    },
                },
            ).status_code
            == 201
        )
        svc = p.wait_service("broken", status="Abnormal", timeout=90)
        inst = svc["instances"][0]
        assert inst["restarts"] >= 2 and "exited with code" in inst["lastError"]
        assert svc["message"]
        logs = c.get("/api/v1/services/broken/logs").text
        assert f"{inst['id']} | " in logs


def test_delete_is_graceful(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        c.post("/api/v1/services", json=_service("bye"))
        p.wait_service("bye")
        pids = [i["pid"] for i in c.get("/api/v1/services/bye").json()["instances"]]
        body = {**CHAT, "model": "bye", "max_tokens": 120, "ignore_eos": True, "stream": True}
        chunks: list[str] = []

        def stream() -> None:
            with p.client() as c2, c2.stream("POST", "/v1/chat/completions", json=body) as s:
                chunks.extend(line for line in s.iter_lines() if line)

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(1.0)
        assert c.delete("/api/v1/services/bye").status_code == 202
        # Routing stops at once ...
        r = c.post("/v1/chat/completions", json={**CHAT, "model": "bye"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        # ... while the in-flight stream finishes.
        t.join(120)
        assert chunks[-1] == "data: [DONE]"
        usage = [json.loads(x[6:]) for x in chunks if x.startswith("data: {")]
        assert sum(len(u["choices"]) and bool(u["choices"][0]["delta"].get("content")) for u in usage) >= 100
        deadline = time.monotonic() + 60
        while c.get("/api/v1/services/bye").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/api/v1/services/bye").status_code == 404
        assert not any(
            psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids
        )


def test_control_plane_crash_readopts_instances_and_stops_orphans(make_platform):
    p = make_platform()
    p.start("--no-default")
    with p.client() as c:
        c.post("/api/v1/services", json=_service("keep"))
        before = p.wait_service("keep")["instances"]
    p.crash()  # SIGKILL: no cleanup ran
    engines = engine_processes(p.home)
    assert [e.pid for e in engines] == [before[0]["pid"]]
    # An engine process of this home the store never recorded (a crash between launch and commit).
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        env={**os.environ, "TIDESERVE_HOME": str(p.home), "TIDESERVE_INSTANCE_ID": "not-in-store"},
        start_new_session=True,
    )
    p.start("--no-default")
    after = p.wait_service("keep")["instances"]
    assert [(i["id"], i["pid"], i["restarts"]) for i in after] == [(b["id"], b["pid"], 0) for b in before]
    assert orphan.wait(30) == -signal.SIGKILL
    assert len(engine_processes(p.home)) == 1
    with p.client() as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "model": "keep"}).status_code == 200


def test_apply_yaml_is_idempotent_and_prints_back(make_platform, tmp_path):
    p = make_platform()
    p.start("--no-default")
    doc = _service("from-yaml")
    path = tmp_path / "svc.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert "created" in p.cli("apply", "-f", str(path)).stdout
    assert "unchanged" in p.cli("apply", "-f", str(path)).stdout
    printed = p.cli("services", "yaml", "from-yaml").stdout
    assert yaml.safe_load(printed)["spec"]["parameters"]["maxModelLen"] == 2048
    (tmp_path / "back.yaml").write_text(printed)
    assert "unchanged" in p.cli("apply", "-f", str(tmp_path / "back.yaml")).stdout
    p.wait_service("from-yaml")
    listing = json.loads(p.cli("services", "list", "-o", "json").stdout)
    assert listing[0]["name"] == "from-yaml" and listing[0]["status"] == "Running"
    table = p.cli("services", "list").stdout
    assert "from-yaml" in table and "Running" in table
    with httpx.Client(base_url=p.url, timeout=30) as anon:
        assert anon.get("/api/v1/services").status_code == 401
