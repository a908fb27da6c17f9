import pytest

from tideserve.services.manager import canary_problem


@pytest.mark.parametrize(
    ("stable", "existing", "current", "rolls", "expected"),
    [
        pytest.param(1, set(), 1, True, "has no revision 1 yet: create the service first", id="on create"),
        pytest.param(1, {1}, 2, True, None, id="rolling to 2 keeps 1"),
        pytest.param(1, {1, 2}, 2, False, None, id="routing-only edit adds a canary on 1"),
        pytest.param(2, {1, 2}, 3, True, None, id="rolling to 3 keeps the previous current"),
        pytest.param(2, {1}, 2, True, "is the one this apply creates", id="the new revision itself"),
        pytest.param(2, {1, 2}, 2, False, "already the current revision", id="routing-only on current"),
        pytest.param(1, {1}, 1, False, "it has no other revision yet", id="current and only revision"),
        pytest.param(7, {1, 2}, 3, True, "has no revision 7: set stableRevision", id="unknown revision"),
    ],
)
def test_canary_problem(stable, existing, current, rolls, expected):
    problem = canary_problem("chat", stable, existing, current, rolls)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
