"""The task life cycle as a table, and values that refuse bad fields by name."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
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
    TaskFilter,
    TaskSpec,
    TaskState,
    TaskStateError,
    assignment_of,
    next_state,
)
from proxyd.taskqueue.fairshare import PairUsage, match_key, ranking
from proxyd.taskqueue.model import new_assignment_secret, normalise_site, secret_matches
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


def _spec(overrides: dict[str, object]) -> TaskSpec:
    """A valid TaskSpec with `overrides` applied (which may make it invalid)."""
    values: dict[str, object] = {
        "owner": "/CN=a",
        "vo": "dteam",
        "group": "/dteam",
        "credential_username": "a",
        "payload": Payload("run"),
    }
    values.update(overrides)
    return TaskSpec(**values)  # type: ignore[arg-type]


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
    with pytest.raises(InvalidTask, match=f"^{re.escape(field)}: "):
        _spec(overrides)


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
    matched = Task(1, spec(max_wall_s=600), S.MATCHED, now, 1, PILOT, matched_at=now)
    a = assignment_of(matched, now + dt.timedelta(seconds=200))
    # The budget runs from the match, started or not (I2/I4: heartbeats cannot stretch it).
    assert a is not None and a.live and a.time_left == dt.timedelta(seconds=400)
    a = assignment_of(matched, now + dt.timedelta(hours=1))
    assert a is not None and not a.live and a.time_left == dt.timedelta(0)
    later = now + dt.timedelta(seconds=100)
    running = Task(
        1, spec(max_wall_s=600), S.RUNNING, now, 1, PILOT, matched_at=now, started_at=later
    )
    a = assignment_of(running, now + dt.timedelta(seconds=500))
    assert a is not None and a.live and a.time_left == dt.timedelta(seconds=100)
    a = assignment_of(running, now + dt.timedelta(seconds=700))
    assert a is not None and not a.live and a.time_left == dt.timedelta(0)
    done = Task(1, spec(), S.DONE, now, 1, PILOT, matched_at=now, started_at=now)
    assert assignment_of(done, now).live is False  # type: ignore[union-attr]
    no_match_time = Task(1, spec(), S.MATCHED, now, 1, PILOT)  # fails closed
    assert assignment_of(no_match_time, now).live is False  # type: ignore[union-attr]


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


# --- issue 15: site names in one spelling (finding 4), bounded numbers (finding 7), secrets ---


@pytest.mark.parametrize("spelling", ["SITE-A", "site-a", " Site-A\t", "SITE-A\n", "ＳＩＴＥ-Ａ"])
def test_normalise_site_folds_every_spelling_of_a_site(spelling: str) -> None:
    assert normalise_site(spelling) == "site-a"


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("SITE\nA", "control or formatting"),
        ("SITE\x00A", "control or formatting"),
        ("SITE\u202eA", "control or formatting"),  # right-to-left override
        ("SITE\u200bA", "control or formatting"),  # zero-width space
        ("S" * 256, "at most 255"),
        (7, "must be a string"),
    ],
)
def test_normalise_site_refuses_bad_names(name: object, why: str) -> None:
    with pytest.raises(InvalidTask, match=f"^where: .*{why}"):
        normalise_site(name, "where")


def test_every_site_name_is_normalised_where_it_is_given() -> None:
    assert pilot(" SITE-A ").site == "site-a"
    r = Requirements(sites_allowed=frozenset({"SITE-A"}), sites_banned=frozenset({"Site-B"}))
    assert (r.sites_allowed, r.sites_banned) == ({"site-a"}, {"site-b"})
    assert r.unmet(pilot("site-a")) is None and r.unmet(pilot("SITE-B")) is not None
    assert TaskFilter(site="SITE-A").site == "site-a"
    with pytest.raises(InvalidTask, match=r"^PilotCapabilities\.site"):
        pilot("SITE-A\r\nmasked: no")


MAX_WALL = 365 * 86400


@pytest.mark.parametrize(
    ("overrides", "field", "bound"),
    [
        ({"max_wall_s": 999_999_999_999}, "TaskSpec.max_wall_s", str(MAX_WALL)),
        ({"max_wall_s": 2**31}, "TaskSpec.max_wall_s", str(MAX_WALL)),
        ({"max_cpu_s": 2**63}, "TaskSpec.max_cpu_s", "315360000"),
        ({"priority": 1_000_001}, "TaskSpec.priority", "1000000"),
        ({"fqans": ("/dteam",) * 257}, "TaskSpec.fqans", "256"),
        ({"owner": "/CN=a\x00"}, "TaskSpec.owner", "NUL"),
        ({"credential_name": "x\ud800"}, "TaskSpec.credential_name", "surrogate"),
    ],
)
def test_task_numbers_and_lists_are_bounded(
    overrides: dict[str, object], field: str, bound: str
) -> None:
    with pytest.raises(InvalidTask, match=f"^{re.escape(field)}: .*{bound}"):
        _spec(overrides)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: Requirements(cpu_time=2**40), "Requirements.cpu_time"),
        (lambda: Requirements(memory_mb=2**40), "Requirements.memory_mb"),
        (lambda: Requirements(tags=frozenset(str(i) for i in range(257))), "Requirements.tags"),
        (lambda: Payload("run", tuple("a" * 257)), "Payload.args"),
        (lambda: Payload("run", ("x" * 4097,)), "Payload.args"),
        (lambda: Payload("run\x00"), "Payload.command"),
        (lambda: pilot(cpu_time_left=2**64), "PilotCapabilities.cpu_time_left"),
        (lambda: pilot(memory_mb=2**64), "PilotCapabilities.memory_mb"),
        (lambda: PilotCapabilities("/CN=p", "id\n2", "S"), "PilotCapabilities.pilot_id"),
        (lambda: Accounting(cpu_s=float("inf"), wall_s=1), "Accounting.cpu_s"),
        (lambda: Accounting(cpu_s=1, wall_s=10**400), "Accounting.wall_s"),
        (lambda: Accounting(cpu_s=1, wall_s=1, max_rss_kb=2**63), "Accounting.max_rss_kb"),
        (lambda: Accounting(cpu_s=1, wall_s=1, exit_code=2**31), "Accounting.exit_code"),
        (
            lambda: Accounting(cpu_s=1, wall_s=1, log_tail="x" * (16 * 1024 + 1)),
            "Accounting.log_tail",
        ),
        (lambda: TaskFilter(limit=0), "TaskFilter.limit"),
        (lambda: TaskFilter(after_id=2**64), "TaskFilter.after_id"),
    ],
)
def test_every_number_of_a_pilot_names_its_field(build: object, field: str) -> None:
    with pytest.raises(InvalidTask, match=f"^{re.escape(field)}: "):
        build()  # type: ignore[operator]


def test_a_log_tail_keeps_what_a_database_can_store() -> None:
    acc = Accounting(cpu_s=1, wall_s=1, log_tail="binary\x00out\ud800put")
    assert "\x00" not in acc.log_tail and acc.log_tail.encode("utf-8")


def test_assignment_secret_digest_and_instance() -> None:
    secret, digest = new_assignment_secret()
    assert len(secret) >= 43 and digest == hashlib.sha256(secret.encode()).hexdigest()
    assert secret_matches(digest, secret)
    assert not secret_matches(digest, secret + "x") and not secret_matches(digest, None)
    assert not secret_matches(None, secret)  # a task matched without a secret: nobody's
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    task = Task(1, spec(), S.MATCHED, now, 1, PILOT, matched_at=now, secret_digest=digest)
    assert assignment_of(task, now, secret).instance_ok is True  # type: ignore[union-attr]
    assert assignment_of(task, now, "guess").instance_ok is False  # type: ignore[union-attr]
    assert assignment_of(task, now).instance_ok is False  # type: ignore[union-attr]
    assert secret not in repr(dataclasses.replace(task, assignment_secret=secret))
    assert digest not in repr(task)
