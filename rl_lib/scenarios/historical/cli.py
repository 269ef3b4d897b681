"""``rl-lib data sample`` and ``rl-lib data import``; registered by :mod:`rl_lib.cli`.

Only argparse at import time: ``rl-lib --help`` must not load pandas, SQLAlchemy and scipy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rl_lib.errors import UserError


def add_data_command(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data sample`` and ``data import`` on the CLI's sub-command parsers."""
    from rl_lib.argtypes import positive_int

    data = subparsers.add_parser("data", help="historical bookings: write a sample, import a table")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("sample", help="write a sample bookings table from the default scenario")
    p.add_argument("--out", required=True, help="output: .csv, .parquet or SQLAlchemy URL (sqlite:///x.db)")
    p.add_argument(
        "--days", type=positive_int, default=90, help="service dates, ending 2026-06-30 (default 90)"
    )
    p.add_argument("--seed", type=int, default=7, help="seed of the sample (default 7)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("import", help="validate a bookings table; replay it as days or fit a scenario to it")
    p.add_argument("source", help="bookings: .csv, .parquet or SQLAlchemy URL (sqlite:///bookings.db)")
    p.add_argument("--table", default="bookings", help="SQL table name or SELECT query (default bookings)")
    p.add_argument("--days", type=positive_int, help="keep the last N service dates (default: all)")
    p.add_argument(
        "--on-error",
        choices=("raise", "skip"),  # schema.ON_ERROR (tested): importing it would load pandas
        default="raise",
        help="bad rows: stop (default) or skip and count",
    )
    p.add_argument(
        "--mode", choices=("replay", "fit"), default="replay", help="replay days (default) or fit a scenario"
    )
    p.add_argument(
        "--config", help="experiment YAML whose scenario gives fleet, hours, travel (default: built-in)"
    )
    p.add_argument(
        "--out", help="replay: write the validated table (.csv/.parquet); fit: the scenario YAML (required)"
    )
    p.set_defaults(func=_cmd_import)


def _cmd_sample(args: argparse.Namespace) -> int:
    from rl_lib.scenarios.historical.sample import SAMPLE_END, write_sample

    rows = write_sample(args.out, days=args.days, seed=args.seed)
    print(f"wrote {rows} bookings over {args.days} service dates (ending {SAMPLE_END}) to {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from rl_lib.experiment import load_experiment
    from rl_lib.scenarios.historical.fit import fit_scenario, save_scenario
    from rl_lib.scenarios.historical.replay import days_from_bookings
    from rl_lib.scenarios.historical.sources import check_destination, read_bookings, write_bookings

    if args.mode == "fit":
        if not args.out or Path(args.out).suffix.lower() not in (".yaml", ".yml"):
            raise UserError("--mode fit writes the fitted scenario: give --out PATH.yaml")
        if not Path(args.out).parent.is_dir():
            raise UserError(f"{args.out}: folder {Path(args.out).parent} does not exist; create it first")
    elif args.out:
        check_destination(args.out)
    scenario = load_experiment(args.config).scenario
    df, report = read_bookings(args.source, table=args.table, last_days=args.days, on_error=args.on_error)
    print(report.summary())
    if args.mode == "fit":
        fitted = fit_scenario(df, scenario)
        save_scenario(fitted, args.out)
        dm = fitted.demand
        print(
            f"fitted: {dm.advance_per_day:g} advance + {dm.same_day_per_day:g} same-day bookings a day, "
            f"{len(fitted.geography.facilities)} facilities, {len(fitted.geography.towns)} towns; "
            f"wrote {args.out}"
        )
        return 0
    days = days_from_bookings(df, scenario)
    print(f"{'date':<12}{'bookings':>9}{'advance':>9}")
    for day in days:
        print(f"{day.day_id:<12}{day.n_bookings:>9}{day.bookings.advance.mean():>9.1%}")
    total = sum(d.n_bookings for d in days)
    advance = sum(int(d.bookings.advance.sum()) for d in days)
    print(f"{len(days)} days, {total} bookings, {advance / max(total, 1):.1%} advance")
    if args.out:
        write_bookings(df, args.out)
        print(f"wrote the validated table ({len(df)} rows) to {args.out}")
    return 0
