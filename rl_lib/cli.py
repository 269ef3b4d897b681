"""``rl-lib``: one sub-command per job. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rl_lib.argtypes import non_negative_int, positive_int
from rl_lib.errors import UserError


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


def cmd_baselines(args: argparse.Namespace) -> int:
    from rl_lib.evaluation import evaluate_baselines, format_table, summarize
    from rl_lib.io import atomic_write_csv

    cfg, scenario = _load(args)
    days = _test_days(scenario, args.split, args.days)
    per_episode = evaluate_baselines(
        days, weights=cfg.reward, seeds=args.seeds, hindsight=not args.no_hindsight
    )
    summary = summarize(per_episode)
    print(
        f"Baselines on {len(days)} {args.split} days of scenario '{cfg.scenario.name}' "
        "(mean [95% paired-bootstrap CI]):"
    )
    print(format_table(summary))
    if args.out:
        out = Path(args.out)
        atomic_write_csv(per_episode, out / "baselines_per_episode.csv")
        atomic_write_csv(summary, out / "baselines_summary.csv")
        print(f"wrote {out / 'baselines_per_episode.csv'} and {out / 'baselines_summary.csv'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rl_lib.config import from_dict, to_dict
    from rl_lib.experiment import ExperimentConfig, load_experiment
    from rl_lib.io import parse_size
    from rl_lib.training import quick, train

    cfg = load_experiment(args.config)
    overrides = {
        k: v for k, v in (("total_timesteps", args.total_timesteps), ("seed", args.seed)) if v is not None
    }
    if overrides:  # validated like the file itself
        data = to_dict(cfg)
        data["training"].update(overrides)
        cfg = from_dict(ExperimentConfig, data, source="command line")
    if args.quick:
        cfg = quick(cfg)
    try:
        budget = parse_size(args.disk_budget) if args.disk_budget is not None else None
    except ValueError as exc:
        raise UserError(f"--disk-budget: {exc}") from None
    if args.max_wall_time is not None and not (math.isfinite(args.max_wall_time) and args.max_wall_time > 0):
        raise UserError("--max-wall-time must be a positive, finite number of seconds")
    result = train(
        cfg,
        args.run_dir,
        max_wall_time=args.max_wall_time,
        disk_budget=budget,
        device=args.device,
        force_resume=args.force_resume,
        progress_bar=args.progress if args.progress is not None else sys.stdout.isatty(),
        torch_threads=args.threads,
    )
    return result.exit_code


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from rl_lib.evaluation import evaluate_baselines, evaluate_runs, format_table, summarize
    from rl_lib.io import atomic_write_csv
    from rl_lib.pipeline import shared_experiment
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.training.run_record import read_metadata

    run_dirs = [Path(d) for d in args.run_dirs]
    cfg = shared_experiment(run_dirs, [read_metadata(d) for d in run_dirs])
    days = _test_days(SyntheticScenario(cfg.scenario), "test", args.days)
    per_episode = evaluate_runs(run_dirs, days, cfg.reward, args.which)
    if not args.no_baselines:
        baselines = evaluate_baselines(days, weights=cfg.reward, hindsight=not args.no_hindsight)
        per_episode = pd.concat([per_episode, baselines], ignore_index=True)
    summary = summarize(per_episode)
    print(
        f"{len(run_dirs)} run(s), {args.which} model, on {len(days)} test days "
        "(mean [95% paired-bootstrap CI]):"
    )
    print(format_table(summary))
    out = Path(args.out) if args.out else run_dirs[0] / "evaluations"
    atomic_write_csv(per_episode, out / f"test_{args.which}_per_episode.csv")
    atomic_write_csv(summary, out / f"test_{args.which}_summary.csv")
    print(f"wrote {out / f'test_{args.which}_per_episode.csv'}")
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
        print(f"\nBaselines on {len(days)} test days (mean [95% paired-bootstrap CI]):")
        print(format_table(summary))
    return 0


def cmd_bench_train(args: argparse.Namespace) -> int:
    import tempfile

    from rl_lib.bench import machine_description, measure_full_buffer_costs, measure_train_rates

    print(f"machine: {machine_description()}; torch threads: 1")
    rates = measure_train_rates(steps=args.steps, rounds=args.rounds)
    print(f"SB3 DQN on CartPole-v1:          {rates.cartpole_dqn_steps_per_s:8.0f} steps/s")
    print(f"SB3 DQN on DispatchEnv:          {rates.dispatch_dqn_steps_per_s:8.0f} steps/s")
    print(f"MaskableDQN (MLP) on DispatchEnv:  {rates.dispatch_maskable_dqn_steps_per_s:6.0f} steps/s")
    print(f"MaskableDQN (fleet) on DispatchEnv:{rates.dispatch_fleet_dqn_steps_per_s:6.0f} steps/s")
    print(
        f"ratio to CartPole (median of {rates.rounds} interleaved rounds of {rates.steps_per_round} steps, "
        f"the plan's MLP, default settings): {rates.ratio:.3f} (DQN), {rates.masked_ratio:.3f} (MaskableDQN);"
        " "
        "target >= 0.85"
    )
    print(f"fleet network / MLP, MaskableDQN on DispatchEnv: {rates.fleet_ratio:.3f} (target >= 0.6)")
    with tempfile.TemporaryDirectory() as tmp:
        costs = measure_full_buffer_costs(tmp)
    per_1000 = 1000 / rates.dispatch_maskable_dqn_steps_per_s
    print(
        f"full 100k replay buffer: {costs.buffer_mb:.1f} MB on disk; training-thread stall per checkpoint "
        f"{costs.snapshot_s:.3f} s, background write {costs.write_s:.3f} s; at the default frequency "
        f"(1000 steps = {per_1000:.2f} s of training) the stall is {100 * costs.snapshot_s / per_1000:.1f} % "
        "of wall time (target <= 3 %)"
    )
    print(f"resume start-up with the full buffer: {costs.resume_s:.2f} s (target <= 5 s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from rl_lib.inference import export_onnx, onnx_metadata

    files = export_onnx(
        args.run_dir, args.which, int8=args.int8, int8_static=args.int8_static,
        calibration_days=args.calibration_days, min_agreement=args.min_agreement,
    )  # fmt: skip
    for path in files:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.int8_static:
        meta = onnx_metadata(files[-1])
        int8, fp32 = (meta[k].split(",") if meta[k] else [] for k in ("int8_layers", "fp32_layers"))
        print(
            f"static INT8: {len(int8)} of {len(int8) + len(fp32)} layers INT8 "
            f"(kept FP32: {', '.join(fp32) or 'none'}); calibrated on {meta['calibration_states']} states "
            f"of {args.calibration_days} validation days; agreement with FP32 on {meta['check_states']} "
            f"held-out validation states: {100 * float(meta['check_agreement']):.2f} %"
        )
    return 0


def cmd_bench_inference(args: argparse.Namespace) -> int:
    import torch

    from rl_lib.bench import machine_description
    from rl_lib.inference import benchmark, export_onnx
    from rl_lib.io import atomic_write_csv
    from rl_lib.pipeline import shared_experiment
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.training.run_record import read_metadata

    torch.set_num_threads(1)
    run_dir = Path(args.run_dir)
    cfg = shared_experiment([run_dir], [read_metadata(run_dir)])
    export_onnx(run_dir, args.which, int8=True)
    days = _test_days(SyntheticScenario(cfg.scenario), "test", args.days)
    result = benchmark(run_dir, days, args.which)
    print(f"machine: {machine_description()}; one thread per backend; {args.days} test days")
    for name, table in result.items():
        print(f"\n{name}:\n{table.to_string(index=False)}")
        atomic_write_csv(table, run_dir / "inference" / f"benchmark_{name}.csv")
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    from rl_lib.ablation import format_ablation
    from rl_lib.pipeline import ablation_step
    from rl_lib.training.run_record import EVALUATION

    table = ablation_step(args.results, args.resamples)
    print(f"{args.results}: reward per test day, mean [95 % paired-bootstrap CI] "
          f"(written to {Path(args.results) / EVALUATION / 'ablation.csv'})")  # fmt: skip
    print(format_ablation(table))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from rl_lib.evaluation import format_table
    from rl_lib.training.run_record import EVALUATION

    evaluation = Path(args.results) / EVALUATION
    path = evaluation / "aggregate.csv"
    if not path.is_file():
        raise UserError(f"{path}: missing; run the evaluation step (notebook 02_evaluate) first")
    aggregate = pd.read_csv(path)
    summary = aggregate.rename(columns={"mean_ci_low": "ci_low", "mean_ci_high": "ci_high"})
    print(f"{args.results}: mean [95 % paired-bootstrap CI] over test days and seeds ({path})")
    print(format_table(summary[summary["kpi"].isin(args.kpis)]))
    paired_path = evaluation / "paired_differences.csv"
    if not paired_path.is_file():
        raise UserError(f"{paired_path}: missing; run the evaluation step (notebook 02_evaluate) again")
    paired = pd.read_csv(paired_path)
    reward = paired[paired["kpi"] == "reward"]
    print("\nReward difference to the nearest-vehicle baseline, paired by day [95 % CI]:")
    for row in reward.itertuples():
        verdict = "CI excludes 0" if row.ci_excludes_zero else "CI includes 0"
        print(f"  {row.policy:16s} {row.mean_diff:+9.1f} [{row.ci_low:+.1f}, {row.ci_high:+.1f}]  {verdict}")
    return 0


def cmd_thesis(args: argparse.Namespace) -> int:
    from rl_lib.pipeline import figures_step

    written = figures_step(args.results, args.lang, args.figures_dir, args.tables_dir, args.agent,
                           args.tuning, args.tuning_storage)  # fmt: skip
    for path in written:
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from rl_lib.feedback.cli import add_feedback_command, add_registry_command
    from rl_lib.kaggle.cli import add_kaggle_commands
    from rl_lib.scenarios.historical.cli import add_data_command
    from rl_lib.serving.ab_cli import add_ab_command
    from rl_lib.serving.cli import add_bench_serve_command, add_serve_command
    from rl_lib.training.checkpoints import KAGGLE_DISK_BUDGET
    from rl_lib.tuning.cli import add_bench_tune_command, add_tune_command

    parser = argparse.ArgumentParser(prog="rl-lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    config_help = "experiment YAML (scenario + reward); default: the built-in default scenario"
    p = sub.add_parser(
        "baselines", help="evaluate every baseline and the hindsight bound, print the KPI table"
    )
    p.add_argument("--config", help=config_help)
    p.add_argument("--split", choices=("train", "validation", "test"), default="test")
    p.add_argument("--days", type=positive_int, default=30, help="number of days of the split (default 30)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="policy seeds (random baseline)")
    p.add_argument(
        "--no-hindsight", action="store_true", help="skip the hindsight upper bound (an LP per day)"
    )
    p.add_argument("--out", help="folder for baselines_per_episode.csv and baselines_summary.csv")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("train", help="train (or resume) an agent into a run dir with three-level checkpoints")
    p.add_argument("--config", help="experiment YAML, e.g. configs/dqn.yaml; default: built-in defaults")
    p.add_argument("--total-timesteps", type=positive_int, help="override training.total_timesteps")
    p.add_argument("--run-dir", help="run folder (default runs/{name}_seed{seed}); rerun to resume")
    p.add_argument("--seed", type=int, help="override training.seed")
    p.add_argument("--quick", action="store_true", help="smoke test: 2 steps, a checkpoint at each")
    p.add_argument("--max-wall-time", type=float, help="seconds; stop cleanly (interrupted, exit 3) before")
    p.add_argument("--disk-budget", help="e.g. 5GB; refuse a save beyond it "
                   f"(default {KAGGLE_DISK_BUDGET / 1e9:g}GB on Kaggle)")  # fmt: skip
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--force-resume", action="store_true", help="resume even a run that diverged")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stdout is a terminal)")  # fmt: skip
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="runs' models on the test days, next to the baselines")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the CSVs (default: RUN_DIR/evaluations of the first run)")
    p.add_argument("--which", choices=("best", "final", "latest"), default="best")
    p.add_argument("--days", type=positive_int, default=30)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-hindsight", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="a DQN run's Q-network as ONNX (FP32; INT8 with --int8, --int8-static)")
    p.add_argument("run_dir")
    p.add_argument("--which", choices=("best", "final"), default="best")
    p.add_argument("--int8", action="store_true", help="also a dynamically quantised INT8 copy")
    p.add_argument(
        "--int8-static", action="store_true", help="also a statically quantised INT8 copy (calibrated)"
    )
    p.add_argument(
        "--calibration-days", type=positive_int, default=10,
        help="validation days that calibrate --int8-static; as many more check it (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--min-agreement", type=float, default=0.99,
        help="share of held-out decisions --int8-static must keep; its least tolerant layers stay FP32 "
        "until it does (default 0.99)",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="print a results folder's KPI table and paired differences")
    p.add_argument("results", help="results folder of the pipeline (runs/, evaluation/)")
    p.add_argument("--kpis", nargs="+", default=["reward", "completion_rate", "on_time_rate",
                   "p95_lateness_min", "mean_deadhead_km", "decision_ms"])  # fmt: skip
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ablation", help="the agent study's table: each agent vs batch matching and nearest")
    p.add_argument("results", help="results folder of the pipeline (params/ablation.yaml: results/ablation)")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap replicates")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("thesis", help="Chapter 7 figures and LaTeX tables from a results folder")
    p.add_argument("--results", required=True, help="results folder of the pipeline (runs/, evaluation/)")
    p.add_argument("--lang", choices=("fr", "en"), default="fr")
    p.add_argument("--figures-dir", default="thesis_figures")
    p.add_argument("--tables-dir", default="latex/generated")
    p.add_argument("--agent", default="dqn", help="the RL policy of the Baseline-vs-RL table and the "
                   "hyperparameters: a DQN or MaskablePPO run name")  # fmt: skip
    p.add_argument("--tuning", help="study folder of `rl-lib tune` (e.g. results/tune/dqn); default: "
                   "RESULTS/tuning/STUDY when the results folder holds one")  # fmt: skip
    p.add_argument("--tuning-storage", metavar="URL", help="the study's storage, as given to `rl-lib tune "
                   "--storage` (e.g. postgresql+psycopg://user@host/db); default: the SQLite file in "
                   "its folder")  # fmt: skip
    p.set_defaults(func=cmd_thesis)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("env", help="DispatchEnv decisions/s next to CartPole-v1, and the baseline table")
    p.add_argument("--config", help=config_help)
    p.add_argument("--steps", type=positive_int, default=20_000, help="steps per timing round")
    p.add_argument("--rounds", type=positive_int, default=5, help="interleaved timing rounds")
    p.add_argument(
        "--days", type=non_negative_int, default=30, help="test days for the KPI table (0: skip it)"
    )
    p.add_argument("--no-hindsight", action="store_true", help="skip the hindsight bound")
    p.set_defaults(func=cmd_bench_env)

    p = bench.add_parser("train", help="DQN steps/s vs CartPole, checkpoint stall and resume start-up")
    p.add_argument("--steps", type=positive_int, default=5_000, help="training steps per timing round")
    p.add_argument("--rounds", type=positive_int, default=3, help="interleaved timing rounds")
    p.set_defaults(func=cmd_bench_train)

    p = bench.add_parser("inference", help="decision latency, throughput and size per inference backend")
    p.add_argument("run_dir")
    p.add_argument("--which", choices=("best", "final"), default="best")
    p.add_argument("--days", type=positive_int, default=3, help="test days played (default 3)")
    p.set_defaults(func=cmd_bench_inference)
    add_bench_tune_command(bench)
    add_bench_serve_command(bench)

    add_data_command(sub)
    add_kaggle_commands(sub)
    add_tune_command(sub)
    add_serve_command(sub)
    add_ab_command(sub)
    add_registry_command(sub)
    add_feedback_command(sub)
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
