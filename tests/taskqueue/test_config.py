"""[taskqueue] max_wall_time, pilot_sites, max_attempts and limits: parsed, bounded, and errors
that name the key."""

from __future__ import annotations

import datetime as dt

import pytest

from proxyd.config import ConfigError, TaskQueueConfig, parse_config
from proxyd.tasklimits import SiteLimits, TaskLimits

BASE = '[server]\nhost_cert = "h.pem"\nhost_key = "k.pem"\n'
PILOTS = "/DC=org/DC=example/OU=robots/CN=dteam pilot"


def test_defaults() -> None:
    tq = parse_config(BASE, "/etc/proxyd/proxyd.toml").taskqueue
    assert tq.max_wall_time == dt.timedelta(days=30) and tq.pilot_sites == {}
    assert tq.sites_of(PILOTS) is None  # not bound: any site, as before
    assert tq.max_attempts == 3 and tq.limits == TaskLimits()  # no limits
    assert not tq.limits.running_limited and tq.limits.priority_range(["/dteam"]) is None


def test_limits_are_parsed_and_names_normalised() -> None:
    text = (
        BASE
        + "[taskqueue]\nmax_attempts = 5\n"
        + "[taskqueue.limits]\nmax_running_per_owner = 50\nmax_queued_per_owner = 1000\n"
        + '[taskqueue.limits.sites."LCG.CERN.cern"]\nmax_running = 500\n'
        + 'max_running_per_group = { "/dteam/analysis/Role=NULL" = 100 }\n'
        + '[taskqueue.limits.priority]\n"/dteam/Role=production" = [-10, 1000]\n'
        + '"/dteam/Role=NULL" = [0, 10]\n"*" = [0, 0]\n'
    )
    tq = parse_config(text, "/etc/proxyd/proxyd.toml").taskqueue
    assert tq.max_attempts == 5
    assert tq.limits == TaskLimits(
        max_running_per_owner=50,
        max_queued_per_owner=1000,
        sites={"lcg.cern.cern": SiteLimits(500, {"/dteam/analysis": 100})},
        priority={"/dteam/Role=production": (-10, 1000), "/dteam": (0, 10), "*": (0, 0)},
    )
    ranges = tq.limits.priority_range
    assert ranges(["/dteam"]) == (0, 10)
    assert ranges(["/dteam", "/dteam/Role=production"]) == (-10, 1000)  # the widest
    assert ranges(["/dteam/analysis"]) == (0, 0)  # not listed: "*"


def test_pilot_sites_are_normalised_and_every_matching_pattern_counts() -> None:
    text = (
        BASE
        + '[taskqueue]\nmax_wall_time = "2d"\n[taskqueue.pilot_sites]\n'
        + f'"{PILOTS} CERN" = ["LCG.CERN.cern", " lcg.cern.CERN "]\n'
        + f'"{PILOTS} *" = ["Shared-Site"]\n'
    )
    tq = parse_config(text, "/etc/proxyd/proxyd.toml").taskqueue
    assert tq.max_wall_time == dt.timedelta(days=2)
    assert tq.pilot_sites == {f"{PILOTS} CERN": ("lcg.cern.cern",), f"{PILOTS} *": ("shared-site",)}
    assert tq.sites_of(f"{PILOTS} CERN") == {"lcg.cern.cern", "shared-site"}
    assert tq.sites_of(f"{PILOTS} PIC") == {"shared-site"}
    assert tq.sites_of("/DC=org/DC=example/OU=robots/CN=other") is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('[taskqueue]\nmax_wall_time = "366d"\n', "[taskqueue] max_wall_time must be"),
        ('[taskqueue.pilot_sites]\n"/CN=p" = "SITE-A"\n', "must map to a list of site names"),
        ('[taskqueue.pilot_sites]\n"/CN=p" = ["SITE\\nA"]\n', "control or formatting"),
        ('[taskqueue.pilot_sites]\n"/CN=p" = [""]\n', "must not be empty"),
        ('[taskqueue.pilot_sites]\n"" = ["SITE-A"]\n', "pattern must not be empty"),
        ("[taskqueue]\npilot_sites = 3\n", "[taskqueue] pilot_sites must be a table"),
        ("[taskqueue]\nmax_attempts = 0\n", "[taskqueue] max_attempts must be an integer from 1"),
        (
            "[taskqueue.limits]\nmax_running_per_owner = -1\n",
            "[taskqueue.limits] max_running_per_owner must be an integer from 0",
        ),
        (
            "[taskqueue.limits]\nmax_running = 3\n",
            "[taskqueue.limits] has unknown key(s) max_running",
        ),
        (
            '[taskqueue.limits.sites."SITE-A"]\nmax_runing = 3\n',
            "[taskqueue.limits] sites.'SITE-A' has unknown key(s) max_runing",
        ),
        (
            '[taskqueue.limits.sites."SITE\\nA"]\nmax_running = 3\n',
            "control or formatting",
        ),
        (
            '[taskqueue.limits.sites."SITE-A"]\nmax_running_per_group = { "dteam" = 1 }\n',
            "max_running_per_group: 'dteam' is not an FQAN",
        ),
        (
            '[taskqueue.limits.priority]\n"/dteam" = [10, 0]\n',
            "[taskqueue.limits] priority.'/dteam' must be [lowest, highest]",
        ),
        (
            '[taskqueue.limits.priority]\n"/dteam" = 5\n',
            "[taskqueue.limits] priority.'/dteam' must be [lowest, highest]",
        ),
    ],
)
def test_bad_values_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra, "/etc/proxyd/proxyd.toml")
    assert message in str(err.value) and "/etc/proxyd/proxyd.toml" in str(err.value)


def test_an_empty_binding_binds_to_no_site() -> None:
    assert TaskQueueConfig(pilot_sites={"/CN=p": ()}).sites_of("/CN=p") == frozenset()
