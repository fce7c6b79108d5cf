"""`proxyd-pilot`: the pilot agent on a worker node."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from ..logs import configure as configure_logging
from ..pilot.agent import PilotAgent, PilotSettings
from ..pilot.identity import IdentityError, IdentitySwitch
from ..pilot.watchdog import become_subreaper
from . import common


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 0 (off) or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="proxyd-pilot", description="pull tasks from proxyd and run them"
    )
    p.add_argument("--server", help="proxyd API URL (default $PROXYD_URL)")
    p.add_argument("--site", required=True, help="the site this pilot runs at")
    p.add_argument("--ce", default="", help="the computing element")
    p.add_argument("--platform", default="", help="e.g. EL9-x86_64")
    p.add_argument("--tags", default="", help="comma-separated capability tags")
    p.add_argument(
        "--time", type=int, default=24 * 3600, help="seconds this pilot may work (its slot)"
    )
    p.add_argument("--memory", type=int, default=0, help="MB available to payloads")
    p.add_argument(
        "--workdir", type=Path, default=None, help="where task work directories are made"
    )
    p.add_argument("--identity-switch", choices=("none", "account-map", "command"), default="none")
    p.add_argument("--account-map", type=Path, help='file of "<DN>" account lines')
    p.add_argument("--switch-command", help="glexec-like template, e.g. 'sudo -u {account} --'")
    p.add_argument("--heartbeat", type=float, default=60.0, help="seconds between heartbeats")
    p.add_argument(
        "--renew-proxy-before",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="fetch a fresh payload proxy when less than this is left (checked at each heartbeat)",
    )
    p.add_argument(
        "--max-tasks", type=int, default=0, help="stop after this many tasks (0: no limit)"
    )
    p.add_argument("--pilot-id", default=None, help="default: host name and process id")
    w = p.add_argument_group(
        "watchdog", "how a payload that goes bad without hitting a limit is caught (0: off)"
    )
    w.add_argument(
        "--stuck-after",
        type=_not_negative,
        default=1800.0,
        metavar="SECONDS",
        help="kill a payload as stuck when it used almost no CPU for this long (default 1800)",
    )
    w.add_argument(
        "--stuck-cpu-fraction",
        type=_not_negative,
        default=0.05,
        metavar="F",
        help="'almost no CPU': less than this fraction of one core (default 0.05)",
    )
    w.add_argument(
        "--min-disk",
        type=lambda t: int(_not_negative(t)),
        default=10,
        metavar="MB",
        help="kill a payload when its work directory has less free space (default 10)",
    )
    w.add_argument(
        "--cores",
        type=lambda t: int(_not_negative(t)),
        default=1,
        help="the slot's cores (default 1)",
    )
    w.add_argument(
        "--max-load-factor",
        type=_not_negative,
        default=4.0,
        metavar="F",
        help="kill a payload keeping more than F x cores threads runnable (default 4)",
    )
    w.add_argument(
        "--load-window",
        type=_not_negative,
        default=60.0,
        metavar="SECONDS",
        help="the load is averaged over this time constant (default 60)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()

    def body() -> int:
        if not become_subreaper():
            logging.getLogger("proxyd.pilot").warning(
                "could not become a child subreaper: a payload that daemonises escapes the watchdog"
            )
        auth = common.ClientAuth.from_proxy(common.proxy_path())
        if not auth.cert_file.exists():
            auth = common.ClientAuth(common.user_cert_path(), common.user_key_path())
        api = common.ApiClient(common.server_url(args.server), auth, common.cert_dir())
        try:
            switch = IdentitySwitch(
                args.identity_switch, account_map=args.account_map, template=args.switch_command
            )
        except IdentityError as exc:
            common.fail(str(exc))
        settings = PilotSettings(
            site=args.site,
            pilot_id=args.pilot_id or f"{socket.gethostname()}:{os.getpid()}",
            ce=args.ce,
            platform=args.platform,
            tags=frozenset(t for t in args.tags.split(",") if t),
            time_budget_s=args.time,
            memory_mb=args.memory,
            workdir_root=args.workdir or Path(os.environ.get("TMPDIR", "/tmp")),  # noqa: S108
            heartbeat_s=args.heartbeat,
            renew_proxy_before_s=args.renew_proxy_before,
            max_tasks=args.max_tasks,
            stuck_s=args.stuck_after,
            stuck_cpu_fraction=args.stuck_cpu_fraction,
            min_disk_mb=args.min_disk,
            cores=args.cores,
            load_factor=args.max_load_factor,
            load_window_s=args.load_window,
            cert_dir=str(common.cert_dir()),
            voms_dir=str(common.voms_dir()),
        )
        summary = PilotAgent(api, settings, switch).run()
        logging.getLogger("proxyd.pilot").info(
            "pilot finished: %d done, %d failed", summary.done, summary.failed
        )
        return 0

    return common.run_command("proxyd-pilot", body)


if __name__ == "__main__":
    sys.exit(main())
