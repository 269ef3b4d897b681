"""The fleet-equivariant networks, the n-step / time-aware / double-DQN target, and what they must keep:
save and load, ONNX, the Dispatcher on a fleet of another size, and an agent that learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch as th
from conftest import tiny_config
from gymnasium import spaces
from sb3_contrib import MaskablePPO

from rl_lib.agents import FleetActorCriticPolicy, FleetQNetwork, MaskableDQN, MaskableReplayBuffer
from rl_lib.agents.fleet import FleetScorer, fleet_size
from rl_lib.envs import DispatchEnv
from rl_lib.envs.dispatch_env import N_BOOKING, N_GLOBAL, N_VEHICLE, observation_size
from rl_lib.evaluation import evaluate_agent, evaluate_baselines
from rl_lib.inference import Dispatcher, export_onnx
from rl_lib.scenarios.synthetic import SyntheticScenario
from rl_lib.training import train


def permute_vehicles(obs: th.Tensor, perm: np.ndarray) -> th.Tensor:
    k = len(perm)
    block = obs[:, N_BOOKING:-N_GLOBAL].reshape(len(obs), N_VEHICLE, k)[:, :, perm]
    return th.cat([obs[:, :N_BOOKING], block.reshape(len(obs), -1), obs[:, -N_GLOBAL:]], dim=1)


def random_obs(k: int, n: int = 16, seed: int = 0) -> th.Tensor:
    obs = th.rand(n, observation_size(k), generator=th.Generator().manual_seed(seed))
    obs[:, N_BOOKING : N_BOOKING + k] = (obs[:, N_BOOKING : N_BOOKING + k] > 0.5).float()  # feasible
    return obs


@pytest.mark.parametrize(
    "kwargs", [{}, {"context": "attention"}, {"dueling": True}, {"context": "attention", "dueling": True}]
)
def test_permuting_the_vehicles_permutes_their_scores_and_keeps_the_refuse_score(kwargs):
    th.manual_seed(0)
    scorer = FleetScorer(hidden=32, **kwargs).eval()
    obs = random_obs(12)
    perm = np.random.default_rng(0).permutation(12)
    with th.no_grad():
        q, q_perm = scorer(obs), scorer(permute_vehicles(obs, perm))
    th.testing.assert_close(q_perm[:, :12], q[:, :12][:, perm], rtol=1e-5, atol=1e-5)
    th.testing.assert_close(q_perm[:, 12], q[:, 12], rtol=1e-5, atol=1e-5)
    assert not th.allclose(q[:, 0], q[:, 1])  # and the vehicles are told apart


def test_one_scorer_reads_any_fleet_size_and_rejects_a_foreign_layout():
    scorer = FleetScorer(hidden=16)
    for k in (1, 4, 12, 16):
        assert scorer(random_obs(k, n=3)).shape == (3, k + 1)
        assert fleet_size(observation_size(k)) == k
    with pytest.raises(ValueError, match="not DispatchEnv's layout"):
        fleet_size(observation_size(12) + 1)
    with pytest.raises(ValueError, match="context"):
        FleetScorer(context="lstm")


# ------------------------------------------------------------------ the replay buffer's targets
def filled_buffer(**kwargs) -> MaskableReplayBuffer:
    """A 6-row buffer, observation = its row number; episode ends after row 2; masks row-coded."""
    k = 2
    buffer = MaskableReplayBuffer(
        6, spaces.Box(0, 100, (observation_size(k),)), spaces.Discrete(k + 1), device="cpu",
        optimize_memory_usage=True, handle_timeout_termination=False, **kwargs,
    )  # fmt: skip
    rewards = [1.0, 2.0, 4.0, 8.0, 16.0]
    elapsed = [5.0, 10.0, 0.0, 5.0, 20.0]
    for i, (r, e) in enumerate(zip(rewards, elapsed, strict=True)):
        mask = np.array([i % 2 == 0, True, True])
        obs, nxt = np.full((1, observation_size(k)), i, np.float32), np.full((1, observation_size(k)), i + 1)
        buffer.add(obs, nxt, np.array([[i % 3]]), np.array([r]), np.array([i == 2]),
                   [{"action_mask": mask, "elapsed_min": e}])  # fmt: skip
    return buffer


def test_n_step_returns_stop_at_episode_ends_and_at_the_newest_transition():
    buffer = filled_buffer(n_steps=3, gamma=0.5)
    batch = buffer._get_samples(np.array([0, 1, 2, 3, 4]))
    # row 0: 1 + .5*2 + .25*4, ends with the episode at row 2; row 1: 2 + .5*4; row 2: 4 (terminal);
    # row 3: 8 + .5*16, stopped at row 4, the newest; row 4: 16.
    th.testing.assert_close(batch.rewards.flatten(), th.tensor([3.0, 4.0, 4.0, 16.0, 16.0]))
    th.testing.assert_close(batch.dones.flatten(), th.tensor([1.0, 1.0, 1.0, 0.0, 0.0]))
    th.testing.assert_close(batch.discounts.flatten(), th.tensor([0.125, 0.25, 0.5, 0.25, 0.5]))
    # The next state is the one after the window's last transition, with that transition's mask.
    th.testing.assert_close(batch.next_observations[:, 0], th.tensor([3.0, 3.0, 3.0, 5.0, 5.0]))
    np.testing.assert_array_equal(batch.next_action_masks[:, 0].numpy(), [True, True, True, True, True])
    one_step = filled_buffer(n_steps=1, gamma=0.5)._get_samples(np.array([0, 1, 3]))
    th.testing.assert_close(one_step.rewards.flatten(), th.tensor([1.0, 2.0, 8.0]))
    np.testing.assert_array_equal(one_step.next_action_masks[:, 0].numpy(), [True, False, False])


def test_time_aware_discount_is_gamma_per_tau_minutes():
    buffer = filled_buffer(n_steps=2, gamma=0.5, discount_tau_min=5.0)
    batch = buffer._get_samples(np.array([0, 3]))
    # row 0: 1 + 0.5^(5/5) * 2, bootstrap 0.5^(5/5) * 0.5^(10/5); row 3: 8 + 0.5 * 16, bootstrap 0.5 * 0.5^4.
    th.testing.assert_close(batch.rewards.flatten(), th.tensor([2.0, 16.0]))
    th.testing.assert_close(batch.discounts.flatten(), th.tensor([0.125, 0.5**5]))
    with pytest.raises(KeyError, match="elapsed_min"):
        buffer.add(np.zeros((1, observation_size(2))), np.zeros((1, observation_size(2))), np.array([[0]]),
                   np.array([0.0]), np.array([False]), [{"action_mask": np.ones(3, bool)}])  # fmt: skip


class FixedQ(th.nn.Module):
    def __init__(self, values) -> None:
        super().__init__()
        self.values = th.tensor(values)

    def forward(self, obs):
        return self.values


@pytest.mark.parametrize("double_q", [False, True])
def test_double_and_scaled_td_target_against_a_hand_computed_batch(test_days, double_q):
    model = MaskableDQN("FleetPolicy", DispatchEnv(days=test_days), double_q=double_q, reward_scale=0.1,
                        buffer_size=100, policy_kwargs={"hidden": 8}, seed=0)  # fmt: skip
    model.q_net_target = FixedQ([[1.0, 9.0, 3.0], [4.0, 5.0, 6.0]])
    model.q_net = FixedQ([[5.0, 7.0, 0.0], [0.0, 1.0, 9.0]])
    data = type("Batch", (), {})()
    data.next_observations = th.zeros(2, 1)
    data.next_action_masks = th.tensor([[True, False, True], [True, True, False]])
    data.rewards, data.dones, data.discounts = (
        th.tensor([[10.0], [20.0]]),
        th.tensor([[0.0], [1.0]]),
        th.tensor([[0.5], [0.5]]),
    )
    # Row 0: feasible {0, 2}. Plain: max target = 3. Double: online argmax over {0, 2} is 0 -> target 1.
    # Row 1 is terminal: only the scaled reward.
    expected = [[0.1 * 10 + 0.5 * (1.0 if double_q else 3.0)], [0.1 * 20]]
    th.testing.assert_close(model.td_target(data), th.tensor(expected))


# --------------------------------------------------------------------- models that must keep working
def test_fleet_dqn_saves_loads_and_exports_to_onnx_that_agrees_with_torch(tmp_path):
    import onnxruntime as ort

    config = tiny_config(dqn={"network": "fleet", "fleet_hidden": 16, "dueling": True, "n_steps": 2,
                              "discount_tau_min": 5.0})  # fmt: skip
    run_dir = tmp_path / "run"
    assert train(config, run_dir, log=lambda *a: None).status == "completed"
    model = MaskableDQN.load(run_dir / "best_model" / "best_model.zip", device="cpu")
    assert isinstance(model.q_net, FleetQNetwork) and model.q_net.dueling
    assert (model.double_q, model.reward_scale, model.n_steps) == (True, 0.1, 2)
    assert model.replay_buffer_kwargs["discount_tau_min"] == 5.0
    (fp32,) = export_onnx(run_dir)
    days = SyntheticScenario(config.scenario).days("test", 2)
    env = DispatchEnv(days=days, auto_refuse_infeasible=False)
    observations = []
    for i in range(len(days)):
        obs, _ = env.reset(options={"day_index": i})
        terminated = False
        while not terminated:
            observations.append(obs)
            obs, _, terminated, _, _ = env.step(
                int(model.predict(obs, True, action_masks=env.action_masks())[0])
            )
    obs = np.array(observations)
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"obs": obs})[0].argmax(1), model.q_values(obs).argmax(1))


def test_fleet_maskable_ppo_has_per_vehicle_logits_and_survives_save_and_load(test_days, tmp_path):
    env = DispatchEnv(days=test_days)
    model = MaskablePPO(FleetActorCriticPolicy, env, n_steps=64, batch_size=32, n_epochs=1,
                        policy_kwargs={"hidden": 16}, seed=0)  # fmt: skip
    model.learn(128)
    obs = random_obs(12, n=4)
    perm = np.random.default_rng(1).permutation(12)
    with th.no_grad():
        logits = model.policy.get_distribution(obs).distribution.logits
        permuted = model.policy.get_distribution(permute_vehicles(obs, perm)).distribution.logits
        values, values_permuted = (
            model.policy.predict_values(obs),
            model.policy.predict_values(permute_vehicles(obs, perm)),
        )
    th.testing.assert_close(permuted[:, :12], logits[:, :12][:, perm], rtol=1e-4, atol=1e-5)
    th.testing.assert_close(values_permuted, values, rtol=1e-4, atol=1e-5)
    model.save(tmp_path / "ppo.zip")
    loaded = MaskablePPO.load(tmp_path / "ppo.zip", device="cpu")
    with th.no_grad():
        th.testing.assert_close(loaded.policy.get_distribution(obs).distribution.logits, logits)


def test_a_model_trained_on_four_vehicles_dispatches_twelve(tmp_path):
    config = tiny_config(dqn={"network": "fleet", "fleet_hidden": 16})
    run_dir = tmp_path / "run"
    assert train(config, run_dir, log=lambda *a: None).status == "completed"
    dispatcher = Dispatcher(run_dir, "torch")
    day = SyntheticScenario().day("test", 0)  # the default 12-vehicle fleet
    fleet = config.scenario.fleet
    trained_on = fleet.n_cars + fleet.n_wheelchair_vans + fleet.n_stretcher_units
    assert dispatcher.any_fleet_size and (trained_on, day.n_vehicles) == (4, 12)
    from rl_lib.envs.core import DispatchCore

    core = DispatchCore()
    core.reset(day)
    first = dispatcher.decide_batch(core, list(range(20)))
    assert first.q_values.shape == (20, 13) and first.masks[np.arange(20), first.actions].all()
    kpis = dispatcher.play(day)
    assert kpis["n_bookings"] == day.n_bookings and 0 < kpis["completion_rate"] <= 1


def test_a_short_training_run_beats_random_feasible_play(tmp_path):
    """A learning smoke test: 12 000 steps on the default scenario beat random feasible dispatch on 4
    validation days by a margin that untrained weights do not reach (checked below). (With the
    dueling head, seed 0 was still short of the margin at 8 000 steps: 1 321 against 1 359.)"""
    from rl_lib.pipeline import with_overrides

    config = with_overrides(tiny_config(), {
        "scenario.demand.advance_per_day": 110.0, "scenario.demand.same_day_per_day": 70.0,
        "scenario.fleet.n_cars": 6, "scenario.fleet.n_wheelchair_vans": 4,
        "scenario.fleet.n_stretcher_units": 2,
        "scenario.splits.validation_days": 4, "training.total_timesteps": 12000,
        "training.dqn.learning_starts": 1000, "training.dqn.buffer_size": 8000,
        "training.dqn.target_update_interval": 500, "training.dqn.batch_size": 64,
        "training.dqn.train_freq": 4,
        "training.dqn.fleet_hidden": 64, "training.checkpoints.checkpoint_freq": 4000,
        "training.checkpoints.eval_freq": 4000, "training.checkpoints.n_eval_episodes": 4,
    })  # fmt: skip
    run_dir = tmp_path / "run"
    assert train(config, run_dir, log=lambda *a: None).status == "completed"
    days = SyntheticScenario(config.scenario).days("validation", 4)
    random_play = evaluate_baselines(days, ["random"], config.reward, hindsight=False)["reward"].mean()
    trained = MaskableDQN.load(run_dir / "best_model" / "best_model.zip", device="cpu")
    untrained = MaskableDQN("FleetPolicy", DispatchEnv(days=days), policy_kwargs={"hidden": 64}, seed=0)
    scores = {
        name: evaluate_agent(model, DispatchEnv(days=days, reward=config.reward), len(days))["reward"].mean()
        for name, model in (("trained", trained), ("untrained", untrained))
    }
    margin = 0.05 * abs(random_play)
    assert scores["untrained"] < random_play + margin  # the margin is not reached by chance weights
    assert scores["trained"] > random_play + margin
