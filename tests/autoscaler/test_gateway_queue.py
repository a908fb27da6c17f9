"""Requests held at the gateway count as waiting, spread over the ready instances."""

import pytest

from tideserve.autoscaler.decide import InstanceSample, with_gateway_queue

READY = InstanceSample(ready=True, started_at=0, values={"waiting_per_replica": 1.0})
STARTING = InstanceSample(ready=False, started_at=0, values={})
NO_LOAD = InstanceSample(ready=True, started_at=0, values={})


@pytest.mark.parametrize(
    ("samples", "queued", "waiting"),
    [
        ([READY, READY], 4, [3.0, 3.0]),
        ([READY, STARTING], 3, [4.0, None]),  # a starting instance takes no share
        ([READY, NO_LOAD], 2, [3.0, None]),  # nor one whose load is unknown (missing stays missing)
        ([READY], 0, [1.0]),
        ([STARTING], 5, [None]),  # nobody to spread over: the from-zero path counts them
    ],
)
def test_gateway_queue_spreads_over_ready_instances(samples, queued, waiting):
    got = with_gateway_queue(samples, queued)
    assert [s.values.get("waiting_per_replica") for s in got] == waiting
    assert [s.ready for s in got] == [s.ready for s in samples]
