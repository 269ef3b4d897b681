"""The benchmark code runs (small sizes; no timing is asserted: timings live in BENCHMARKS.md)."""

from __future__ import annotations

from rl_lib.bench import measure_env_rates, measure_full_buffer_costs, measure_train_rates


def test_env_rates_measure_both_envs():
    rates = measure_env_rates(steps=300, rounds=1, n_days=2)
    assert rates.cartpole_steps_per_s > 0 and rates.dispatch_steps_per_s > 0 and rates.ratio > 0


def test_train_rates_and_full_buffer_costs_run(tmp_path):
    from rl_lib.experiment import DQNConfig

    small = DQNConfig(net_arch=(16,), learning_starts=50, buffer_size=1_000)
    rates = measure_train_rates(steps=200, rounds=1, dqn_config=small)
    assert rates.masked_ratio > 0
    costs = measure_full_buffer_costs(tmp_path, buffer_size=2_000)
    assert costs.buffer_mb > 0 and costs.resume_s > 0


def test_tuning_rates_run_the_same_trials_in_every_variant(tmp_path):
    import copy

    import optuna
    import yaml
    from conftest import TINY_EXPERIMENT

    from rl_lib.bench import measure_tuning_rates

    tiny = copy.deepcopy(TINY_EXPERIMENT)
    tiny["scenario"]["splits"]["validation_days"] = 5  # the benchmark evaluates on 5 days
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    runs = measure_tuning_rates(config, trials=2, timesteps_per_trial=200, work_dir=tmp_path / "studies")
    assert [(r.workers, r.pruning, r.trials) for r in runs] == [(1, False, 2), (2, False, 2), (2, True, 2)]
    params = []
    for db in sorted((tmp_path / "studies").glob("*/study.db")):
        study = optuna.load_study(study_name=db.parent.name, storage=f"sqlite:///{db}")
        trials = study.get_trials()
        assert len(trials) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
        assert all(t.params for t in trials), "the queued hyperparameters were trained"
        params.append(sorted(str(sorted(t.params.items())) for t in trials))
    assert len(params) == 3 and params[0] == params[1] == params[2], "the variants compare the same work"
