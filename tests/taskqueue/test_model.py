"""The task life cycle as a table, and values that refuse bad fields by name."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import pytest

from proxyd.taskqueue import (
    ACTIVE,
    FINAL,
    QUEUED,
    TRANSITIONS,
    Accounting,
    FairShare,
    InvalidTask,
    Payload,
    PilotCapabilities,
    Requirements,
    Task,
    TaskEvent,
    TaskSpec,
    TaskState,
    TaskStateError,
    assignment_of,
    next_state,
)
from proxyd.taskqueue.fairshare import PairUsage, match_key, ranking
from tests.taskqueue.support import PILOT, pilot, spec

S, E = TaskState, TaskEvent
LEGAL = {
    (S.WAITING, E.MATCH): S.MATCHED,
    (S.WAITING, E.CANCEL): S.CANCELLED,
    (S.RESCHEDULED, E.MATCH): S.MATCHED,
    (S.RESCHEDULED, E.CANCEL): S.CANCELLED,
    (S.MATCHED, E.START): S.RUNNING,
    (S.MATCHED, E.HEARTBEAT): S.MATCHED,
    (S.MATCHED, E.FAIL): S.FAILED,
    (S.MATCHED, E.STALL): S.STALLED,
    (S.MATCHED, E.RESCHEDULE): S.RESCHEDULED,
    (S.MATCHED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.HEARTBEAT): S.RUNNING,
    (S.RUNNING, E.COMPLETE): S.DONE,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.STALL): S.STALLED,
    (S.RUNNING, E.RESCHEDULE): S.RESCHEDULED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
    (S.STALLED, E.COMPLETE): S.DONE,
    (S.STALLED, E.FAIL): S.FAILED,
    (S.STALLED, E.RESCHEDULE): S.RESCHEDULED,
    (S.STALLED, E.CANCEL): S.CANCELLED,
    (S.FAILED, E.RESCHEDULE): S.RESCHEDULED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_transition_table(state: TaskState, event: TaskEvent) -> None:
    expected = LEGAL.get((state, event))
    if expected is not None:
        assert next_state(state, event) is expected
        return
    with pytest.raises(TaskStateError) as err:
        next_state(state, event, task_id=7)
    assert (err.value.state, err.value.event, err.value.task_id) == (state, event, 7)
    message = str(err.value)
    assert f"task 7 in state '{state.value}' cannot '{event.value}'" in message


def test_table_and_state_sets_agree() -> None:
    assert set(TRANSITIONS) == set(TaskState)
    assert {(s, e) for s, events in TRANSITIONS.items() for e in events} == set(LEGAL)
    assert {S.WAITING, S.RESCHEDULED} == QUEUED and {S.MATCHED, S.RUNNING} == ACTIVE
    assert {S.DONE, S.FAILED, S.CANCELLED} == FINAL
    assert not TRANSITIONS[S.DONE] and not TRANSITIONS[S.CANCELLED]
    assert "events allowed in 'done': none" in str(TaskStateError(S.DONE, E.START))


def test_spec_normalises_and_defaults() -> None:
    s = TaskSpec(
        owner="/CN=a",
        vo="dteam",
        group="/dteam/analysis/Role=NULL/Capability=NULL",
        fqans=("/dteam/Role=production/Capability=NULL", "/dteam/Role=production"),
        credential_username="a",
        payload=Payload("run", ["x"], ()),  # type: ignore[arg-type]
    )
    assert s.group == "/dteam/analysis" and s.fqans == ("/dteam/Role=production",)
    assert s.payload.args == ("x",)
    assert spec().fqans == ("/dteam",)  # the group, when no FQAN is given


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vo": "dteam/x"}, "TaskSpec.vo"),
        ({"group": "/ops"}, "TaskSpec.group"),
        ({"group": "/dteam/Role=production"}, "TaskSpec.group"),
        ({"fqans": ("/ops/Role=x",)}, "TaskSpec.fqans"),
        ({"fqans": "/dteam"}, "TaskSpec.fqans"),
        ({"fqans": ("dteam",)}, "TaskSpec.fqans"),
        ({"priority": 10**7}, "TaskSpec.priority"),
        ({"priority": True}, "TaskSpec.priority"),
        ({"max_wall_s": 0}, "TaskSpec.max_wall_s"),
        ({"owner": ""}, "TaskSpec.owner"),
        ({"credential_username": ""}, "TaskSpec.credential_username"),
    ],
)
def test_spec_names_the_bad_field(overrides: dict[str, object], field: str) -> None:
    values: dict[str, object] = {
        "owner": "/CN=a",
        "vo": "dteam",
        "group": "/dteam",
        "credential_username": "a",
        "payload": Payload("run"),
    }
    values.update(overrides)
    with pytest.raises(InvalidTask, match=f"^{re.escape(field)}: "):
        TaskSpec(**values)  # type: ignore[arg-type]


def test_other_values_name_the_bad_field() -> None:
    with pytest.raises(InvalidTask, match=r"^Requirements\.tags"):
        Requirements(tags="gpu")  # type: ignore[arg-type]
    with pytest.raises(InvalidTask, match=r"^Requirements\.memory_mb"):
        Requirements(memory_mb=-1)
    with pytest.raises(InvalidTask, match=r"^PilotCapabilities\.site"):
        PilotCapabilities("/CN=p", "id", "")
    with pytest.raises(InvalidTask, match=r"^Accounting\.wall_s"):
        Accounting(cpu_s=1, wall_s=float("nan"))
    with pytest.raises(InvalidTask, match=r"^Payload\.command"):
        Payload("")
    with pytest.raises(InvalidTask, match=r"^FairShare\.shares"):
        FairShare(shares={"/dteam": 0})


def test_requirements_say_what_is_unmet() -> None:
    caps = pilot()
    assert Requirements().unmet(caps) is None
    cases = {
        "not among the allowed sites": Requirements(sites_allowed=frozenset({"X"})),
        "banned by the task": Requirements(sites_banned=frozenset({"SITE-A"})),
        "is not 'EL8'": Requirements(platform="EL8"),
        "lacks the tags gpu": Requirements(tags=frozenset({"gpu", "cvmfs"})),
        "s of CPU": Requirements(cpu_time=10**6),
        "MB of memory": Requirements(memory_mb=10**6),
    }
    for phrase, requirements in cases.items():
        assert phrase in (requirements.unmet(caps) or "")


def test_assignment_of() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    task = Task(1, spec(max_wall_s=600), S.WAITING, now)
    assert assignment_of(task, now) is None
    matched = Task(1, spec(max_wall_s=600), S.MATCHED, now, 1, PILOT)
    a = assignment_of(matched, now + dt.timedelta(hours=1))
    assert a is not None and a.live and a.time_left == dt.timedelta(seconds=600)  # not started
    running = Task(1, spec(max_wall_s=600), S.RUNNING, now, 1, PILOT, started_at=now)
    a = assignment_of(running, now + dt.timedelta(seconds=500))
    assert a is not None and a.live and a.time_left == dt.timedelta(seconds=100)
    a = assignment_of(running, now + dt.timedelta(seconds=700))
    assert a is not None and not a.live and a.time_left == dt.timedelta(0)
    done = Task(1, spec(), S.DONE, now, 1, PILOT, started_at=now)
    assert assignment_of(done, now).live is False  # type: ignore[union-attr]


def test_fair_share_ranking_and_decay() -> None:
    policy = FairShare(shares={"/dteam/prod": 3.0}, half_life=dt.timedelta(hours=1))
    t0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert policy.decay(100.0, t0, t0 + dt.timedelta(hours=2)) == pytest.approx(25.0)
    ranks = ranking(
        [
            PairUsage("/dteam/prod", "a", 300.0),
            PairUsage("/dteam/prod", "b", 0.0, 300.0),
            PairUsage("/dteam", "c", 200.0),
        ],
        policy,
    )
    assert ranks[("/dteam/prod", "a")] == (200.0, 300.0)  # 600 s over a share of 3
    assert ranks[("/dteam", "c")] == (200.0, 200.0)
    keys = sorted(
        [
            match_key(0, "/dteam/prod", "a", 1, ranks),
            match_key(0, "/dteam", "c", 2, ranks),
            match_key(1, "/dteam/prod", "b", 3, ranks),
        ]
    )
    assert [k[3] for k in keys] == [3, 2, 1]  # priority first; then owner usage in a tie
