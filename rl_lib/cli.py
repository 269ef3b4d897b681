"""``rl-lib``: one sub-command per job. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from rl_lib.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _load(args: argparse.Namespace):
    from rl_lib.experiment import load_experiment
    from rl_lib.scenarios.synthetic import SyntheticScenario

    cfg = load_experiment(args.config)
    return cfg, SyntheticScenario(cfg.scenario)


def _test_days(scenario, split: str, n: int):
    available = len(scenario.day_ids(split))
    if n > available:
        raise UserError(f"--days {n}: the {split} split holds {available} days; ask for fewer or enlarge it")
    return scenario.days(split, n)


def write_csv_atomic(frame, path: Path) -> None:
    """Write a CSV under a temporary name, then rename: a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            frame.to_csv(handle, index=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_baselines(args: argparse.Namespace) -> int:
    from rl_lib.evaluation import evaluate_baselines, format_table, summarize

    cfg, scenario = _load(args)
    days = _test_days(scenario, args.split, args.days)
    per_episode = evaluate_baselines(
        days, weights=cfg.reward, seeds=args.seeds, hindsight=not args.no_hindsight
    )
    summary = summarize(per_episode)
    print(f"Baselines on {len(days)} {args.split} days of scenario '{cfg.scenario.name}' (mean [95% CI]):")
    print(format_table(summary))
    if args.out:
        out = Path(args.out)
        write_csv_atomic(per_episode, out / "baselines_per_episode.csv")
        write_csv_atomic(summary, out / "baselines_summary.csv")
        print(f"wrote {out / 'baselines_per_episode.csv'} and {out / 'baselines_summary.csv'}")
    return 0


def cmd_bench_env(args: argparse.Namespace) -> int:
    from rl_lib.bench import machine_description, measure_env_rates
    from rl_lib.evaluation import evaluate_baselines, format_table, summarize

    cfg, scenario = _load(args)
    rates = measure_env_rates(steps=args.steps, rounds=args.rounds, scenario=scenario)
    print(f"machine: {machine_description()}")
    print(f"CartPole-v1 (gym.make, random actions):       {rates.cartpole_steps_per_s:10.0f} steps/s")
    print(f"DispatchEnv (gym.make, random actions):       {rates.dispatch_steps_per_s:10.0f} decisions/s")
    print(
        f"DispatchEnv (gym.make, random feasible):      {rates.dispatch_masked_steps_per_s:10.0f} decisions/s"
    )
    print(
        f"ratio DispatchEnv / CartPole (median of {rates.rounds} interleaved rounds of "
        f"{rates.steps_per_round} steps): {rates.ratio:.3f} (random), "
        f"{rates.masked_ratio:.3f} (random feasible); target >= 0.25"
    )
    if args.days:
        days = _test_days(scenario, "test", args.days)
        summary = summarize(evaluate_baselines(days, weights=cfg.reward, hindsight=not args.no_hindsight))
        print(f"\nBaselines on {len(days)} test days (mean [95% CI]):")
        print(format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rl_lib.scenarios.historical import add_data_command

    parser = argparse.ArgumentParser(prog="rl-lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    config_help = "experiment YAML (scenario + reward); default: the built-in default scenario"
    p = sub.add_parser(
        "baselines", help="evaluate every baseline and the hindsight bound, print the KPI table"
    )
    p.add_argument("--config", help=config_help)
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--days", type=_positive_int, default=30, help="number of days of the split (default 30)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="policy seeds (random baseline)")
    p.add_argument("--no-hindsight", action="store_true", help="skip the hindsight bound (a MILP per day)")
    p.add_argument("--out", help="folder for baselines_per_episode.csv and baselines_summary.csv")
    p.set_defaults(func=cmd_baselines)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("env", help="DispatchEnv decisions/s next to CartPole-v1, and the baseline table")
    p.add_argument("--config", help=config_help)
    p.add_argument("--steps", type=_positive_int, default=20_000, help="steps per timing round")
    p.add_argument("--rounds", type=_positive_int, default=5, help="interleaved timing rounds")
    p.add_argument("--days", type=int, default=30, help="test days for the KPI table (0: skip it)")
    p.add_argument("--no-hindsight", action="store_true", help="skip the hindsight bound")
    p.set_defaults(func=cmd_bench_env)

    add_data_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"rl-lib: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rl-lib: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
