"""``rl-lib tune``: search (Optuna), then re-train the best trials on fresh seeds and decide."""

from __future__ import annotations

import argparse
import os


def cmd_tune(args: argparse.Namespace) -> int:
    from rl_lib.tuning.retrain import retrain
    from rl_lib.tuning.settings import TuneSettings
    from rl_lib.tuning.study import make_spec, optimize

    settings = TuneSettings(
        timesteps_per_trial=args.timesteps_per_trial,
        n_evaluations=args.evaluations_per_trial,
        n_eval_episodes=args.eval_episodes,
        seed=args.seed,
        pruning=args.pruning,
    )
    spec = make_spec(args.config, args.study, args.out, args.storage, args.space, settings)
    print(f"study {spec.name!r}: {spec.storage_url}, run dirs in {spec.trials_dir}")
    workers = args.workers or os.cpu_count() or 1
    code = optimize(spec, args.trials, workers, args.max_wall_time, args.device)
    if code != 0:
        print("stopped before the budget was used; run the same command again to resume")
        return code
    print(f"{args.trials} trials done: {spec.study_dir / 'trials.csv'}")
    if args.retrain_top == 0:
        return 0
    decision = retrain(spec, args.retrain_top, args.retrain_seeds, args.confirm_days, args.retrain_timesteps,
                       workers, args.device, tuned_config=args.tuned_config)  # fmt: skip
    for row in decision["candidates"]:
        low, high = row["relative_gain_ci"]
        print(f"{row['candidate']}: reward IQM {row['iqm']:.1f}, gain over the default "
              f"{row['relative_gain']:+.1%} [{low:+.1%}, {high:+.1%}]")  # fmt: skip
    low, high = decision["plan_gain"]
    print(f"default: reward IQM {decision['default_iqm']:.1f}; the plan hoped for +{low:.0%} to +{high:.0%}")
    print(decision["reason"])
    return 0


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    from rl_lib.argtypes import non_negative_int, positive_int
    from rl_lib.tuning.settings import TuneSettings

    default = TuneSettings()
    p = sub.add_parser("tune", help="Optuna search of DQN hyperparameters, then re-training of the best")
    p.add_argument("--config", default="configs/dqn.yaml", help="base experiment YAML (algo dqn)")
    p.add_argument("--trials", type=positive_int, default=50, help="trials in the study (default 50)")
    p.add_argument("--study", default="dqn", help="study name; its folder is OUT/STUDY (default dqn)")
    p.add_argument("--out", default="results/tune", help="folder of the studies (default results/tune)")
    p.add_argument("--storage", help="SQLAlchemy URL shared by workers on several machines, e.g. "
                   "postgresql+psycopg://user@host/db (default: SQLite in the study folder)")  # fmt: skip
    p.add_argument("--workers", type=positive_int, help="processes here (default: one per CPU core)")
    p.add_argument("--timesteps-per-trial", type=positive_int, default=default.timesteps_per_trial,
                   help=f"training steps of one trial (default {default.timesteps_per_trial})")  # fmt: skip
    p.add_argument("--evaluations-per-trial", type=positive_int, default=default.n_evaluations,
                   help=f"reports to the pruner (default {default.n_evaluations})")  # fmt: skip
    p.add_argument("--eval-episodes", type=positive_int, default=default.n_eval_episodes,
                   help=f"validation days per evaluation (default {default.n_eval_episodes})")  # fmt: skip
    p.add_argument("--space", help="search-space YAML (default: configs/dqn_space.yaml's built-in copy)")
    p.add_argument("--seed", type=non_negative_int, default=default.seed,
                   help=f"sampler seed (default {default.seed})")  # fmt: skip
    p.add_argument("--no-pruning", dest="pruning", action="store_false", default=default.pruning,
                   help="run every trial to the end")  # fmt: skip
    p.add_argument("--max-wall-time", type=float, help="seconds; stop cleanly, resume with the same command")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--retrain-top", type=non_negative_int, default=3, help="best trials re-trained (0: none)")
    p.add_argument("--retrain-seeds", type=non_negative_int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--retrain-timesteps", type=positive_int, help="default: the per-trial budget")
    p.add_argument(
        "--confirm-days",
        type=positive_int,
        default=30,
        help="held-out validation days of the re-training comparison (default 30)",
    )
    p.add_argument("--tuned-config", default="configs/dqn_tuned.yaml", help="written only on a proven win")
    p.set_defaults(func=cmd_tune)


def cmd_bench_tune(args: argparse.Namespace) -> int:
    import tempfile

    from rl_lib.bench import machine_description, measure_tuning_rates

    print(f"machine: {machine_description()}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = measure_tuning_rates(args.config, args.trials, args.timesteps_per_trial, tmp, args.workers)
    for run in runs:
        print(f"{run.label:28s} {run.trials} trials in {run.seconds:7.1f} s = {run.trials_per_hour:6.1f} "
              f"trials/hour ({run.pruned} pruned)")  # fmt: skip
    one, many, pruned = runs
    print(f"speed-up of {many.workers} workers over 1: {one.seconds / many.seconds:.2f}x (target >= 1.7x); "
          f"pruning: {pruned.trials_per_hour / many.trials_per_hour:.2f}x the trials per hour")  # fmt: skip
    return 0


def add_bench_tune_command(bench: argparse._SubParsersAction) -> None:
    from rl_lib.argtypes import positive_int

    p = bench.add_parser("tune", help="tuning trials/hour: 1 vs N workers, with and without pruning")
    p.add_argument("--config", default="configs/dqn.yaml")
    p.add_argument("--trials", type=positive_int, default=12, help="trials per study (default 12)")
    p.add_argument("--timesteps-per-trial", type=positive_int, default=4_000)
    p.add_argument("--workers", type=positive_int, default=2)
    p.set_defaults(func=cmd_bench_tune)
