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
