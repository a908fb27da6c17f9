"""API keys against a real `tideserve up` (no engines), on SQLite and PostgreSQL: allowed services,
expiry, priority and per-key limits through REST and the CLI, expired keys refused, and the 0002
migration bringing an existing store's keys along with defaults."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
import yaml
from alembic import command

from tests.controlplane.conftest import alembic_to
from tideserve.api.auth import key_allows
from tideserve.api.keys import parse_duration
from tideserve.store.db import Store, migrate
from tideserve.store.models import ApiKey

LIMITS = ("requestsPerMinute", "tokensPerMinute", "maxConcurrent")


@pytest.fixture
def c(shared_platform):
    with shared_platform.client() as client:
        yield client


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("90m", timedelta(minutes=90)),
        ("3600s", timedelta(hours=1)),
        ("1s", timedelta(seconds=1)),
        (" 7d ", timedelta(days=7)),
        ("3650d", timedelta(days=3650)),
    ],
)
def test_parse_duration(text, want):
    assert parse_duration(text) == want


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("", "e.g. '30d'"),
        ("30", "e.g. '30d'"),
        ("d", "e.g. '30d'"),
        ("1.5h", "e.g. '30d'"),
        ("-1d", "e.g. '30d'"),
        ("2w", "e.g. '30d'"),
        ("30D", "e.g. '30d'"),
        ("1d12h", "e.g. '30d'"),
        ("0s", "at least '1s'"),
        ("3651d", "longer than '3650d'"),
        ("99999999999d", "e.g. '30d'"),
    ],
)
def test_parse_duration_rejects_with_the_fix(text, fix):
    with pytest.raises(ValueError) as e:
        parse_duration(text)
    assert repr(text) in str(e.value) and fix in str(e.value)


@pytest.mark.parametrize(
    ("services", "service", "allowed"),
    [
        (None, "chat", True),
        (["chat"], "chat", True),
        (["chat", "code"], "code", True),
        (["chat"], "code", False),
        ([], "chat", False),
    ],
)
def test_key_allows(services, service, allowed):
    assert key_allows(services, service) is allowed


# --- REST ----------------------------------------------------------------------------------------


def test_create_with_every_field_and_read_back(c):
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    body = {
        "name": "full",
        "scope": "inference",
        "services": ["chat", "embed", "chat"],
        "expiresAt": expires.isoformat(),
        "priority": "high",
        "requestsPerMinute": 60,
        "tokensPerMinute": 100000,
        "maxConcurrent": 4,
    }
    r = c.post("/api/v1/keys", json=body)
    assert r.status_code == 201, r.text
    made = r.json()
    secret = made.pop("key")
    assert secret.startswith("ts-") and made["prefix"] == secret[:8]
    assert {
        "name": "full",
        "scope": "inference",
        "revoked": False,
        "services": ["chat", "embed"],  # a repeated name counts once
        "expired": False,
        "priority": "high",
        "requestsPerMinute": 60,
        "tokensPerMinute": 100000,
        "maxConcurrent": 4,
    }.items() <= made.items()
    assert at(made["expiresAt"]) == expires
    assert c.get("/api/v1/keys/full").json() == made
    listing = c.get("/api/v1/keys")
    assert next(k for k in listing.json() if k["name"] == "full") == made
    assert secret not in listing.text and "sha256" not in listing.text

    plain = c.post("/api/v1/keys", json={"name": "plain"}).json()
    assert (plain["services"], plain["expiresAt"], plain["expired"], plain["priority"]) == (
        None,
        None,
        False,
        "normal",
    )
    assert [plain[f] for f in LIMITS] == [None, None, None]
    r = c.get("/api/v1/keys/nope")
    assert r.status_code == 404 and "GET /api/v1/keys" in r.json()["error"]["message"]


def test_expires_in_counts_from_now(c):
    before = datetime.now(UTC)
    made = c.post("/api/v1/keys", json={"name": "half-day", "expiresIn": "12h"}).json()
    after = datetime.now(UTC)
    assert before + timedelta(hours=12) <= at(made["expiresAt"]) <= after + timedelta(hours=12)


PAST = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
FUTURE = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"expiresAt": PAST}, "expiresAt", "is not in the future: give a later time"),
        ({"expiresAt": "2031-01-01T00:00:00"}, "expiresAt", "give a time zone"),
        ({"expiresAt": "next week"}, "expiresAt", "valid datetime"),
        ({"expiresAt": FUTURE, "expiresIn": "1d"}, "expiresIn", "set one of expiresAt or expiresIn"),
        ({"expiresAt": None, "expiresIn": "1d"}, "expiresIn", "set one of expiresAt or expiresIn"),
        ({"expiresIn": "1 week"}, "expiresIn", "e.g. '30d'"),
        ({"expiresIn": 3600}, "expiresIn", "give a duration string such as '30d'"),
        ({"services": ["Chat"]}, "services.0", "not a valid service name: use 1-63 lowercase"),
        ({"services": []}, "services", "or null for all"),
        ({"services": "chat"}, "services", "valid list"),
        ({"priority": "urgent"}, "priority", "'high', 'normal' or 'low'"),
        ({"priority": None}, "priority", "'high', 'normal' or 'low'"),
        ({"requestsPerMinute": 0}, "requestsPerMinute", "greater than or equal to 1"),
        ({"tokensPerMinute": "1000"}, "tokensPerMinute", "valid integer"),
        ({"maxConcurrent": 2.5}, "maxConcurrent", "valid integer"),
        ({"maxConcurrent": 2**31}, "maxConcurrent", "less than or equal to"),
        ({"rateLimit": 5}, "rateLimit", "Extra inputs are not permitted"),
    ],
)
def test_bad_key_fields_are_422_naming_the_field(c, body, loc, words):
    before = c.get("/api/v1/keys").json()
    r = c.post("/api/v1/keys", json={"name": "bad", **body})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["details"][0]["loc"] == loc
    assert loc.split(".")[0] in err["message"] and words in err["message"]
    c.post("/api/v1/keys", json={"name": "target"})  # 409 after the first case: fine
    r = c.patch("/api/v1/keys/target", json=body)
    assert r.status_code == 422 and words in r.json()["error"]["message"]
    after = c.get("/api/v1/keys").json()
    assert [k for k in after if k["name"] != "target"] == [k for k in before if k["name"] != "target"]


def test_patch_changes_and_clears(c):
    made = c.post(
        "/api/v1/keys",
        json={
            "name": "tune",
            "services": ["chat"],
            "expiresIn": "1d",
            "priority": "low",
            "requestsPerMinute": 10,
            "tokensPerMinute": 1000,
            "maxConcurrent": 2,
        },
    ).json()
    r = c.patch(
        "/api/v1/keys/tune", json={"services": ["chat", "code"], "priority": "high", "requestsPerMinute": 20}
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["services"], got["priority"], got["expiresAt"]) == (
        ["chat", "code"],
        "high",
        made["expiresAt"],
    )
    assert [got[f] for f in LIMITS] == [20, 1000, 2]  # fields left out stay as they were
    assert c.patch("/api/v1/keys/tune", json={}).json() == got

    cleared = {"services": None, "expiresAt": None, **dict.fromkeys(LIMITS)}
    got = c.patch("/api/v1/keys/tune", json=cleared).json()
    assert {**cleared, "priority": "high", "expired": False}.items() <= got.items()
    assert c.get("/api/v1/keys/tune").json() == got

    before = datetime.now(UTC)
    got = c.patch("/api/v1/keys/tune", json={"expiresIn": "90m"}).json()
    assert before + timedelta(minutes=90) <= at(got["expiresAt"]) <= datetime.now(UTC) + timedelta(minutes=90)
    got = c.patch("/api/v1/keys/tune", json={"expiresIn": None}).json()
    assert got["expiresAt"] is None

    r = c.patch("/api/v1/keys/tune", json={"scope": "admin"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "scope"
    r = c.patch("/api/v1/keys/nope", json={"priority": "low"})
    assert r.status_code == 404 and "'nope' not found" in r.json()["error"]["message"]
    assert c.delete("/api/v1/keys/tune").status_code == 204
    r = c.patch("/api/v1/keys/tune", json={"priority": "low"})
    assert r.status_code == 409 and "revoked" in r.json()["error"]["message"]
    assert c.get("/api/v1/keys/tune").json()["revoked"] is True

    # The CLI and console run on the admin key: it may get limits but never an expiry.
    r = c.patch("/api/v1/keys/admin", json={"expiresIn": "1d"})
    assert r.status_code == 409 and "admin key cannot expire" in r.json()["error"]["message"]
    assert c.get("/api/v1/keys/admin").json()["expiresAt"] is None
    assert c.delete("/api/v1/keys/admin").status_code == 409


def test_an_expired_key_is_refused_until_extended(shared_platform, c):
    made = c.post("/api/v1/keys", json={"name": "brief", "scope": "admin", "expiresIn": "1s"}).json()
    time.sleep(max(0.0, (at(made["expiresAt"]) - datetime.now(UTC)).total_seconds()) + 0.1)
    with shared_platform.client(made["key"]) as brief:
        r = brief.get("/api/v1/clusters")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "key_expired"
        assert r.json()["error"]["message"] == (
            f"API key 'brief' expired at {made['expiresAt']}: "
            "create a new key or extend it with PATCH /api/v1/keys/brief"
        )
        assert c.get("/api/v1/keys/brief").json()["expired"] is True
        assert "expired" in shared_platform.cli("keys", "list").stdout

        extended = c.patch("/api/v1/keys/brief", json={"expiresIn": "1h"}).json()
        assert extended["expired"] is False
        assert brief.get("/api/v1/clusters").status_code == 200


# --- CLI -----------------------------------------------------------------------------------------


def test_cli_create_update_get_round_trip(shared_platform):
    p = shared_platform
    secret = p.cli(
        "keys",
        "create",
        "cli-limited",
        "--service",
        "chat",
        "--service",
        "code",
        "--expires-in",
        "30d",
        "--priority",
        "low",
        "--rpm",
        "30",
        "--tpm",
        "5000",
        "--max-concurrent",
        "2",
    ).stdout.strip()
    assert secret.startswith("ts-")
    got = yaml.safe_load(p.cli("keys", "get", "cli-limited").stdout)
    assert {"services": ["chat", "code"], "priority": "low", "requestsPerMinute": 30}.items() <= got.items()
    assert (got["tokensPerMinute"], got["maxConcurrent"]) == (5000, 2)
    assert at(got["expiresAt"]) - datetime.now(UTC) > timedelta(days=29)
    assert secret not in json.dumps(got)

    p.cli(
        "keys", "update", "cli-limited", "--all-services", "--no-expiry", "--priority", "high", "--rpm", "60"
    )
    got = json.loads(p.cli("keys", "get", "cli-limited", "-o", "json").stdout)
    assert (got["services"], got["expiresAt"], got["priority"]) == (None, None, "high")
    assert [got[f] for f in LIMITS] == [60, 5000, 2]
    row = next(line for line in p.cli("keys", "list").stdout.splitlines() if line.startswith("cli-limited"))
    assert all(word in row for word in ("active", "*", "high", "60rpm 5000tpm 2conc", "never"))

    p.cli("keys", "update", "cli-limited", "--service", "chat", "--expires-in", "2h")
    got = json.loads(p.cli("keys", "get", "cli-limited", "-o", "json").stdout)
    assert got["services"] == ["chat"] and got["expiresAt"] is not None

    out = p.cli("keys", "update", "cli-limited", "--expires-in", "1d", "--no-expiry", check=False)
    assert out.returncode == 1 and "contradict" in out.stderr
    out = p.cli("keys", "update", "cli-limited", "--expires-in", "soon", check=False)
    assert out.returncode == 1 and "expiresIn" in out.stderr and "e.g. '30d'" in out.stderr
    out = p.cli("keys", "update", "cli-limited", check=False)
    assert out.returncode == 1 and "nothing to change" in out.stderr
    out = p.cli("keys", "get", "nope", check=False)
    assert out.returncode == 1 and "not found" in out.stderr


# --- migration -----------------------------------------------------------------------------------


def test_migration_0002_brings_existing_keys_along(databases, tmp_path):
    store = Store(databases.new() or f"sqlite:///{tmp_path / 'old.db'}")

    def alembic(step, revision: str) -> None:
        alembic_to(store, step, revision)

    def columns() -> set[str]:
        return {col["name"] for col in sa.inspect(store.engine).get_columns("api_keys")}

    # The 0001 shape of the table, so the insert does not touch columns that do not exist yet.
    old_keys = sa.table(
        "api_keys",
        *(sa.column(n) for n in ("name", "prefix", "sha256", "scope")),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    try:
        alembic(command.upgrade, "0001")
        assert "priority" not in columns()
        with store.engine.begin() as conn:
            conn.execute(
                old_keys.insert().values(
                    name="old",
                    prefix="ts-old",
                    sha256="0" * 64,
                    scope="inference",
                    created_at=datetime.now(UTC),
                )
            )
        migrate(store.engine)
        new = {
            "services",
            "expires_at",
            "priority",
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent",
        }
        assert new <= columns()
        with store.session() as s:
            key = s.scalars(sa.select(ApiKey)).one()
            assert key.name == "old" and key.priority == "normal"
            assert [key.services, key.expires_at, key.requests_per_minute] == [None, None, None]
            assert [key.tokens_per_minute, key.max_concurrent] == [None, None]
            key.services, key.max_concurrent = ["chat"], 3
        with store.session() as s:
            key = s.scalars(sa.select(ApiKey)).one()
            assert (key.services, key.max_concurrent) == (["chat"], 3)

        alembic(command.downgrade, "0001")
        assert not new & columns()
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(old_keys.c.name)).scalars().all() == ["old"]
        migrate(store.engine)
        assert new <= columns()
    finally:
        store.close()
