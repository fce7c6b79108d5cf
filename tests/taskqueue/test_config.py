"""[taskqueue] max_wall_time and pilot_sites: parsed, bounded, and errors that name the key."""

from __future__ import annotations

import datetime as dt

import pytest

from proxyd.config import ConfigError, TaskQueueConfig, parse_config

BASE = '[server]\nhost_cert = "h.pem"\nhost_key = "k.pem"\n'
PILOTS = "/DC=org/DC=example/OU=robots/CN=dteam pilot"


def test_defaults() -> None:
    tq = parse_config(BASE, "/etc/proxyd/proxyd.toml").taskqueue
    assert tq.max_wall_time == dt.timedelta(days=30) and tq.pilot_sites == {}
    assert tq.sites_of(PILOTS) is None  # not bound: any site, as before


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
    ],
)
def test_bad_values_name_the_key(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra, "/etc/proxyd/proxyd.toml")
    assert message in str(err.value) and "/etc/proxyd/proxyd.toml" in str(err.value)


def test_an_empty_binding_binds_to_no_site() -> None:
    assert TaskQueueConfig(pilot_sites={"/CN=p": ()}).sites_of("/CN=p") == frozenset()
