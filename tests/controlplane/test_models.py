"""Custom models through the API of a real platform: a local GGUF, an s3:// copy fetched from a real
S3-compatible server (moto, started by the tests), hf:// without network; then one is deployed."""

from __future__ import annotations

import hashlib
import time

import boto3
import pytest

from tests.catalog.test_sources import s3_endpoint  # noqa: F401  (a fixture: a real moto server)
from tideserve.engine.loader import bundled_gguf_path

CREDS = {"accessKeyId": "testing", "secretAccessKey": "testing", "region": "us-east-1"}


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:  # noqa: F811
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="models")
    client.upload_file(str(bundled_gguf_path()), "models", "smollm2/model.gguf")
    return "models"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_register_local_and_s3_models_then_deploy_one(make_platform, s3_endpoint, bucket):  # noqa: F811
    p = make_platform()
    p.start("--no-default")
    gguf = bundled_gguf_path()
    digest = sha256(gguf)
    with p.client() as c:
        r = c.post("/api/v1/models", json={"name": "local-smollm", "source": str(gguf)})
        assert r.status_code == 201, r.text
        m = r.json()
        assert m["sha256"] == digest and m["kind"] == "custom"
        assert m["metadata"]["layers"] == 30 and m["metadata"]["dtype"] == "q4_1"
        assert 130e6 < m["parameters"] < 140e6 and m["maxContext"] == 8192

        s3 = {"endpointUrl": s3_endpoint, **CREDS}
        r = c.post(
            "/api/v1/models", json={"name": "s3-smollm", "source": "s3://models/smollm2/model.gguf", "s3": s3}
        )
        assert r.status_code == 201, r.text
        assert r.json()["sha256"] == digest and str(p.home) in r.json()["path"]
        assert {m["name"] for m in c.get("/api/v1/models", params={"tag": "custom"}).json()} == {
            "local-smollm",
            "s3-smollm",
        }

        # Bad sources: clear 4xx, nothing registered.
        bad = [
            ({"name": "x1", "source": "s3://no-such-bucket/m.gguf", "s3": s3}, 422, "no-such-bucket"),
            ({"name": "x2", "source": "s3://models/nothing-here/", "s3": s3}, 422, "nothing-here"),
            ({"name": "x3", "source": "/no/such/model.gguf"}, 422, "does not exist"),
            ({"name": "x4", "source": "hf://Qwen/Qwen2.5-7B-Instruct"}, 422, "hf://"),
            ({"name": "x5", "source": "ftp://host/model"}, 422, "ftp"),
            ({"name": "local-smollm", "source": str(gguf)}, 409, "already exists"),
            ({"name": "qwen3-8b", "source": str(gguf)}, 409, "model plaza card"),
            ({"name": "Bad Name", "source": str(gguf)}, 422, "name"),
        ]
        for body, status, words in bad:
            r = c.post("/api/v1/models", json=body)
            assert r.status_code == status, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
        t = time.monotonic()
        r = c.post(
            "/api/v1/models",
            json={
                "name": "x6",
                "source": "s3://models/m.gguf",
                "s3": {"endpointUrl": "http://127.0.0.1:9", **CREDS},
            },
        )
        assert r.status_code == 422 and time.monotonic() - t < 20, r.text
        assert {m["name"] for m in c.get("/api/v1/models", params={"tag": "custom"}).json()} == {
            "local-smollm",
            "s3-smollm",
        }

        # Deploy the s3 copy and call it through the platform.
        doc = {
            "metadata": {"name": "from-s3"},
            "spec": {
                "model": "s3-smollm",
                "resources": {"cpu": 0.5, "memory": "1Gi"},
                "parameters": {"maxModelLen": 2048},
            },
        }
        assert c.post("/api/v1/services", json=doc).status_code == 201
        p.wait_service("from-s3")
        chat = {"model": "from-s3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        assert c.post("/v1/chat/completions", json=chat).status_code == 200
        r = c.delete("/api/v1/models/s3-smollm")
        assert r.status_code == 409 and "from-s3" in r.json()["error"]["message"]
        assert c.delete("/api/v1/models/qwen3-8b").status_code == 409
        assert c.delete("/api/v1/models/local-smollm").status_code == 204
