import pytest

from tideserve.services.placement import NodeCapacity, NoFit, Placement, Request, select

GiB = 2**30


def node(id, gpus=(), cpus=8.0, mem=32, used_cpus=0.0, used_mem=0, used_gpus=(), ready=True):
    return NodeCapacity(
        id, f"n{id}", ready, cpus, mem * GiB, tuple(gpus), used_cpus, used_mem * GiB, frozenset(used_gpus)
    )


@pytest.mark.parametrize(
    ("nodes", "req", "expected"),
    [
        ([node(1)], Request(2, 4 * GiB, 0), Placement(1, ())),
        ([node(1, gpus=(0, 1))], Request(1, GiB, 1), Placement(1, (0,))),
        ([node(1, gpus=(0, 1), used_gpus=(0,))], Request(1, GiB, 1), Placement(1, (1,))),
        # spread: the emptier node wins
        ([node(1, used_cpus=6), node(2, used_cpus=1)], Request(1, GiB, 0), Placement(2, ())),
        (
            [node(1, gpus=(0, 1), used_gpus=(0,)), node(2, gpus=(0, 1))],
            Request(1, GiB, 1),
            Placement(2, (0,)),
        ),
        # ties go to the older node, so placement is deterministic
        ([node(2), node(1)], Request(1, GiB, 0), Placement(1, ())),
        ([node(1, ready=False), node(2)], Request(1, GiB, 0), Placement(2, ())),
    ],
)
def test_select(nodes, req, expected):
    assert select(nodes, req) == expected


@pytest.mark.parametrize(
    ("nodes", "req", "reason"),
    [
        ([], Request(1, GiB, 0), "has no nodes"),
        ([node(1)], Request(1, GiB, 1), "node n1 has 0 free GPU(s), the instance needs 1"),
        ([node(1, cpus=2, used_cpus=1.5)], Request(1, GiB, 0), "node n1 has 0.5 free CPUs"),
        ([node(1, mem=4, used_mem=3)], Request(1, 2 * GiB, 0), "node n1 has 1.0 GiB free memory"),
        ([node(1, ready=False)], Request(1, GiB, 0), "node n1 is not Ready"),
    ],
)
def test_no_fit_says_why(nodes, req, reason):
    result = select(nodes, req)
    assert isinstance(result, NoFit)
    assert reason in result.reason
