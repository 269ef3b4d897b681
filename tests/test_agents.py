"""MaskableDQN: masked acting, masked TD target, compact replay buffer; MaskablePPO on the same env."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch as th
from sb3_contrib import MaskablePPO
from stable_baselines3 import DQN

from rl_lib.agents import MaskableDQN
from rl_lib.agents.maskable_dqn import _random_feasible
from rl_lib.envs import DispatchEnv


@pytest.fixture
def model(test_days) -> MaskableDQN:
    env = DispatchEnv(days=test_days)
    return MaskableDQN("MlpPolicy", env, learning_starts=20, buffer_size=500, batch_size=8,
                       policy_kwargs={"net_arch": [16]}, seed=0)  # fmt: skip


def test_random_feasible_draws_only_and_uniformly_among_feasible_actions():
    np.random.seed(0)
    masks = np.array([[False, True, False, True, True], [True, False, False, False, False]])
    draws = np.array([_random_feasible(masks) for _ in range(3000)])
    assert set(draws[:, 0]) == {1, 3, 4} and set(draws[:, 1]) == {0}
    counts = np.bincount(draws[:, 0], minlength=5)[[1, 3, 4]]
    assert np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)
    with pytest.raises(ValueError, match="allows no action"):
        _random_feasible(np.zeros((1, 3), dtype=bool))


@pytest.mark.parametrize("epsilon", [0.0, 1.0])
def test_predict_never_selects_a_masked_action(model, epsilon):
    model.exploration_rate = epsilon
    rng = np.random.default_rng(1)
    obs = rng.random((200, *model.observation_space.shape)).astype(np.float32)
    masks = rng.random((200, model.action_space.n)) < 0.3
    masks[:, -1] = True  # refusal is always allowed
    actions, _ = model.predict(obs, deterministic=epsilon == 0.0, action_masks=masks)
    assert masks[np.arange(200), actions].all()
    # Greedy is the masked argmax of the Q-values.
    if epsilon == 0.0:
        q = model.q_values(obs)
        np.testing.assert_array_equal(actions, np.where(masks, q, -np.inf).argmax(axis=1))


def test_training_never_takes_a_masked_action(test_days, monkeypatch):
    env = DispatchEnv(days=test_days)
    taken = []
    original = DispatchEnv.step

    def spy(self, action):
        taken.append(bool(self.action_masks()[int(action)]))
        return original(self, action)

    monkeypatch.setattr(DispatchEnv, "step", spy)
    model = MaskableDQN("MlpPolicy", env, learning_starts=100, buffer_size=1000, batch_size=8,
                        exploration_fraction=0.5, policy_kwargs={"net_arch": [16]}, seed=0)  # fmt: skip
    model.learn(600)  # warm-up, epsilon-greedy exploration and greedy steps
    assert len(taken) == 600 and all(taken)


def test_td_target_takes_the_max_over_feasible_next_actions_only(model, monkeypatch):
    import rl_lib.agents.maskable_dqn as module

    model.learn(40)
    np.random.seed(3)
    batch = model.replay_buffer.sample(8)
    assert batch.next_action_masks.shape == (8, model.action_space.n)
    assert batch.next_action_masks[:, -1].all()  # refusal is always feasible
    rows, actions = np.nonzero(~batch.next_action_masks.numpy() & (batch.dones.numpy() == 0))
    assert rows.size, "the sample should hold a non-terminal next state with a masked action"
    # Make one masked action by far the best of the target network: a plain max would pick it.
    with th.no_grad():
        model.q_net_target.q_net[-1].bias[actions[0]] += 1e6
        next_q = model.q_net_target(batch.next_observations)
    masked_max = next_q.masked_fill(~batch.next_action_masks, -th.inf).max(dim=1).values
    expected = batch.rewards.flatten() + (1 - batch.dones.flatten()) * model.gamma * masked_max
    assert next_q.max(dim=1).values[rows[0]] > 1e5 > masked_max[rows[0]]

    captured = {}
    original = module.F.smooth_l1_loss

    def spy(current, target, *args, **kwargs):
        captured["target"] = target.detach().flatten()
        return original(current, target, *args, **kwargs)

    monkeypatch.setattr(module.F, "smooth_l1_loss", spy)
    np.random.seed(3)  # the same batch again
    model.train(gradient_steps=1, batch_size=8)
    th.testing.assert_close(captured["target"], expected)


def test_replay_buffer_pickles_only_its_filled_part(test_days):
    env = DispatchEnv(days=test_days)
    model = MaskableDQN("MlpPolicy", env, learning_starts=10_000, buffer_size=10_000,
                        policy_kwargs={"net_arch": [16]}, seed=0)  # fmt: skip
    model.learn(1_000)  # 10 % of the buffer
    buffer = model.replay_buffer
    assert buffer.filled == 1_000
    data = pickle.dumps(buffer)
    full = buffer.observations.nbytes + buffer.next_observations.nbytes + buffer.next_action_masks.nbytes
    assert len(data) < 0.12 * full
    back = pickle.loads(data)
    assert back.observations.shape == buffer.observations.shape
    for name in ("observations", "next_observations", "actions", "rewards", "dones", "next_action_masks"):
        np.testing.assert_array_equal(getattr(back, name), getattr(buffer, name))
    assert (back.pos, back.full) == (buffer.pos, buffer.full)


def test_saved_model_loads_with_plain_dqn_and_maskable_dqn(model, tmp_path):
    model.learn(30)
    model.save(tmp_path / "m.zip")
    plain = DQN.load(tmp_path / "m.zip")
    masked = MaskableDQN.load(tmp_path / "m.zip")
    obs = np.random.default_rng(0).random((20, *model.observation_space.shape)).astype(np.float32)
    with th.no_grad():
        plain_q = plain.q_net(plain.policy.obs_to_tensor(obs)[0]).numpy()
    np.testing.assert_array_equal(plain_q, masked.q_values(obs))  # the same Q-network either way


def test_maskable_ppo_runs_on_the_same_env_and_mask(test_days):
    env = DispatchEnv(days=test_days)
    model = MaskablePPO("MlpPolicy", env, n_steps=64, batch_size=32, n_epochs=1,
                        policy_kwargs={"net_arch": [16]}, seed=0)  # fmt: skip
    model.learn(128)
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        mask = env.action_masks()
        action, _ = model.predict(obs, action_masks=mask)
        assert mask[action]
        obs, _, terminated, _, _ = env.step(action)


@pytest.mark.parametrize("optimize_memory_usage", [False, True])
def test_buffer_snapshot_pickles_like_the_buffer_and_shares_rows_only_when_safe(
    test_days, optimize_memory_usage
):
    env = DispatchEnv(days=test_days)
    model = MaskableDQN("MlpPolicy", env, learning_starts=10_000, buffer_size=1_000,
                        optimize_memory_usage=optimize_memory_usage,
                        replay_buffer_kwargs={"handle_timeout_termination": not optimize_memory_usage},
                        policy_kwargs={"net_arch": [16]}, seed=0)  # fmt: skip
    model.learn(300)
    buffer = model.replay_buffer
    twin = buffer.snapshot(rows_written_meanwhile=100)
    assert np.shares_memory(twin.observations, buffer.observations)  # rows [0, 300) stay untouched
    assert pickle.dumps(twin) == pickle.dumps(buffer)
    twin = buffer.snapshot(rows_written_meanwhile=800)  # the ring could wrap onto them: copy
    assert not np.shares_memory(twin.observations, buffer.observations)
    frozen = pickle.dumps(twin)
    model.learn(900, reset_num_timesteps=False)  # wraps around
    assert buffer.full and pickle.loads(frozen).pos == 300
    full_twin = buffer.snapshot(rows_written_meanwhile=1)
    assert not np.shares_memory(full_twin.actions, buffer.actions)
    assert pickle.dumps(full_twin) == pickle.dumps(buffer)
