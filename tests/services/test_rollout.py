from datetime import UTC, datetime, timedelta

import pytest

from tideserve.services.rollout import (
    DRAINING,
    FAILED,
    RUNNING,
    STARTING,
    Desired,
    Drain,
    Observed,
    Restart,
    Start,
    backoff,
    desired_of,
    plan,
    service_status,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
T0 = NOW - timedelta(hours=1)


def inst(id: str, rev: int, state: str, failures: int = 0, retry_in: float | None = None, age: int = 0):
    retry = NOW + timedelta(seconds=retry_in) if retry_in is not None else None
    return Observed(id, rev, state, failures, retry, T0 + timedelta(seconds=age))


CASES = [
    ("fresh service starts every replica", Desired(1, 3), [], [Start(1)] * 3),
    ("steady state does nothing", Desired(1, 2), [inst("a", 1, RUNNING), inst("b", 1, RUNNING)], []),
    ("starting instances are waited for", Desired(1, 1), [inst("a", 1, STARTING)], []),
    (
        "scale up adds the difference",
        Desired(1, 3),
        [inst("a", 1, RUNNING)],
        [Start(1), Start(1)],
    ),
    (
        "scale down drains not-ready first, then the newest",
        Desired(1, 1),
        [inst("a", 1, RUNNING, age=0), inst("b", 1, RUNNING, age=5), inst("c", 1, STARTING, age=1)],
        [Drain("c"), Drain("b")],
    ),
    (
        "rollout surges one new instance while the old keeps serving",
        Desired(2, 2),
        [inst("a", 1, RUNNING), inst("b", 1, RUNNING)],
        [Start(2)],
    ),
    (
        "rollout waits while the new instance is not ready",
        Desired(2, 2),
        [inst("a", 1, RUNNING), inst("b", 1, RUNNING), inst("c", 2, STARTING)],
        [],
    ),
    (
        "a ready new instance lets one old drain and the next start",
        Desired(2, 2),
        [inst("a", 1, RUNNING, age=0), inst("b", 1, RUNNING, age=1), inst("c", 2, RUNNING)],
        [Drain("b"), Start(2)],
    ),
    (
        "rollout completes",
        Desired(2, 2),
        [inst("a", 1, RUNNING), inst("c", 2, RUNNING), inst("d", 2, RUNNING)],
        [Drain("a")],
    ),
    (
        "failed old instances go at once",
        Desired(2, 1),
        [inst("a", 1, FAILED, failures=1)],
        [Drain("a"), Start(2)],
    ),
    (
        "draining instances are not counted",
        Desired(1, 1),
        [inst("a", 1, DRAINING)],
        [Start(1)],
    ),
    (
        "failed instance restarts once its backoff passed",
        Desired(1, 1),
        [inst("a", 1, FAILED, failures=2, retry_in=-1)],
        [Restart("a")],
    ),
    (
        "failed instance waits for its backoff",
        Desired(1, 1),
        [inst("a", 1, FAILED, failures=2, retry_in=10)],
        [],
    ),
    ("scale to zero drains all", Desired(1, 0), [inst("a", 1, RUNNING)], [Drain("a")]),
    (
        "delete drains everything live",
        Desired(1, 2, deleting=True),
        [inst("a", 1, RUNNING), inst("b", 2, STARTING), inst("c", 1, DRAINING)],
        [Drain("a"), Drain("b")],
    ),
    (
        "maxUnavailable 1 drains an old one before its replacement is ready",
        Desired(2, 2, max_unavailable=1),
        [inst("a", 1, RUNNING, age=0), inst("b", 1, RUNNING, age=1)],
        [Drain("b"), Start(2), Start(2)],
    ),
]


def canary(revision: int, replicas: int = 1, keep: int = 1, keep_replicas: int = 1, **kw) -> Desired:
    return Desired(revision, replicas, keep_revision=keep, keep_replicas=keep_replicas, **kw)


CANARY_CASES = [
    (
        "canary keeps the stable revision beside the current one",
        canary(2),
        [inst("a", 1, RUNNING), inst("b", 2, RUNNING)],
        [],
    ),
    (
        "canary added after a rollout drained the old revision brings it back",
        canary(2),
        [inst("b", 2, RUNNING)],
        [Start(1)],
    ),
    (
        "canary applied with the rollout: stable instances are not old, so none drains",
        canary(2),
        [inst("a", 1, RUNNING)],
        [Start(2)],
    ),
    (
        "stable instances take no surge room from the current revision",
        canary(2, replicas=2, keep_replicas=2),
        [inst("a", 1, RUNNING), inst("b", 1, RUNNING)],
        [Start(2), Start(2)],
    ),
    (
        "stable surplus drains not-ready first, then the newest",
        canary(2),
        [
            inst("a", 1, RUNNING, age=0),
            inst("b", 1, STARTING, age=1),
            inst("c", 1, RUNNING, age=5),
            inst("d", 2, RUNNING),
        ],
        [Drain("b"), Drain("c")],
    ),
    (
        "more stable replicas start more stable instances",
        canary(2, keep_replicas=2),
        [inst("a", 1, RUNNING), inst("d", 2, RUNNING)],
        [Start(1)],
    ),
    (
        "failed stable instance restarts once its backoff passed",
        canary(2),
        [inst("a", 1, FAILED, failures=1, retry_in=-1), inst("d", 2, RUNNING)],
        [Restart("a")],
    ),
    (
        "failed stable instance waits for its backoff",
        canary(2),
        [inst("a", 1, FAILED, failures=1, retry_in=10), inst("d", 2, RUNNING)],
        [],
    ),
    (
        "a ready stable instance does not let an old one drain before the new one is ready",
        canary(3),
        [inst("a", 1, RUNNING), inst("b", 2, RUNNING), inst("c", 3, STARTING)],
        [],
    ),
    (
        "rolling on with a canary drains the previous current revision, not the stable one",
        canary(3),
        [inst("a", 1, RUNNING), inst("b", 2, RUNNING), inst("c", 3, RUNNING)],
        [Drain("b")],
    ),
    (
        "canary removed: the stable instance drains once the current one is ready",
        Desired(2, 1),
        [inst("a", 1, RUNNING), inst("b", 2, RUNNING)],
        [Drain("a")],
    ),
    (
        "canary removed: the stable instance stays while the current one is not ready",
        Desired(2, 1),
        [inst("a", 1, RUNNING), inst("b", 2, STARTING)],
        [],
    ),
    (
        "delete with a canary drains both sets",
        canary(2, deleting=True),
        [inst("a", 1, RUNNING), inst("b", 2, RUNNING)],
        [Drain("a"), Drain("b")],
    ),
    (
        "a stable revision equal to the current one adds nothing",
        canary(2, keep=2),
        [inst("b", 2, RUNNING)],
        [],
    ),
]


@pytest.mark.parametrize(
    ("desired", "observed", "expected"),
    [c[1:] for c in CASES + CANARY_CASES],
    ids=[c[0] for c in CASES + CANARY_CASES],
)
def test_plan(desired, observed, expected):
    assert plan(desired, observed, NOW) == expected


@pytest.mark.parametrize(
    ("desired", "observed", "status"),
    [
        (canary(2), [inst("a", 1, RUNNING), inst("b", 2, RUNNING)], "Running"),
        (canary(2), [inst("a", 1, STARTING), inst("b", 2, RUNNING)], "Pending"),
        (canary(2), [inst("b", 2, RUNNING)], "Pending"),
        (canary(2), [inst("a", 1, RUNNING), inst("b", 2, STARTING)], "Pending"),
        (canary(2), [inst("a", 1, RUNNING), inst("a2", 1, DRAINING), inst("b", 2, RUNNING)], "Running"),
        (canary(3), [inst("a", 1, RUNNING), inst("b", 2, RUNNING), inst("c", 3, RUNNING)], "Updating"),
        (Desired(2, 1), [inst("a", 1, RUNNING), inst("b", 2, RUNNING)], "Updating"),
        (canary(2), [inst("a", 1, FAILED, failures=3), inst("b", 2, RUNNING)], "Abnormal"),
    ],
)
def test_service_status_with_canary(desired, observed, status):
    assert service_status(desired, observed) == status


@pytest.mark.parametrize(
    ("body", "deleting", "desired"),
    [
        ({"replicas": 2}, False, Desired(3, 2)),
        ({}, True, Desired(3, 1, deleting=True)),
        ({"replicas": 1, "routing": {"policy": "round_robin"}}, False, Desired(3, 1)),
        (
            {"replicas": 1, "routing": {"canary": {"stableRevision": 1, "weight": 50}}},
            False,
            Desired(3, 1, keep_revision=1, keep_replicas=1),
        ),
        (
            {"replicas": 2, "routing": {"canary": {"stableRevision": 2, "stableReplicas": 3, "weight": 10}}},
            False,
            Desired(3, 2, keep_revision=2, keep_replicas=3),
        ),
    ],
)
def test_desired_of_reads_replicas_and_the_canary(body, deleting, desired):
    assert desired_of(3, body, deleting) == desired


@pytest.mark.parametrize(
    ("desired", "observed", "status"),
    [
        (Desired(1, 1), [], "Pending"),
        (Desired(1, 1), [inst("a", 1, STARTING)], "Pending"),
        (Desired(1, 1), [inst("a", 1, RUNNING)], "Running"),
        (Desired(1, 0), [], "Running"),
        (Desired(2, 1), [inst("a", 1, RUNNING), inst("b", 2, STARTING)], "Updating"),
        (Desired(1, 1), [inst("a", 1, FAILED, failures=3)], "Abnormal"),
        (Desired(2, 1), [inst("a", 1, RUNNING), inst("b", 2, FAILED, failures=3)], "Abnormal"),
        (Desired(1, 1), [inst("a", 1, FAILED, failures=1)], "Pending"),
        (Desired(1, 1, deleting=True), [inst("a", 1, DRAINING)], "Deleting"),
    ],
)
def test_service_status(desired, observed, status):
    assert service_status(desired, observed) == status


@pytest.mark.parametrize(("failures", "seconds"), [(1, 2), (2, 4), (3, 8), (8, 256), (9, 300), (50, 300)])
def test_backoff_doubles_then_caps(failures, seconds):
    assert backoff(failures) == timedelta(seconds=seconds)
