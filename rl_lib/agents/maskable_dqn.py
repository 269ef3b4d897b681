"""DQN with invalid-action masking, as a small extension of Stable-Baselines3's DQN.

SB3's DQN has no action masking. Three seams add it without forking the algorithm:

- :class:`MaskableReplayBuffer` stores, with each transition, the action mask of the *next*
  state (read from ``info["action_mask"]``, which :class:`~rl_lib.envs.DispatchEnv` returns
  for the observation it returns) and the minutes to the next decision
  (``info["elapsed_min"]``), and pickles only its filled part. It samples n-step returns
  (SB3's ``n_steps``, which SB3 only sets up for its own buffers) with the mask of the state
  n steps ahead, stopping at episode ends and at the newest transition.
- :meth:`MaskableDQN.train` takes the TD target over the next state's feasible actions only:
  ``G + disc * (1 - done) * max_{a' in mask(s')} Q_target(s', a')`` (with ``double_q``, the
  online network's feasible argmax valued by the target network), ``G`` the n-step return
  times ``reward_scale``.
- :meth:`MaskableDQN.predict` is masked: greedy among feasible actions, and epsilon-exploration
  draws uniformly among feasible actions (also during the ``learning_starts`` warm-up).

The discount. Decisions come at irregular times (a few seconds to an hour apart), so a
per-decision ``gamma`` discounts a booking an hour away by how many decisions lie between.
With ``discount_tau_min`` the discount of a step is ``gamma ** (elapsed minutes / tau)``
(a semi-MDP reading: ``gamma`` per ``tau`` minutes of service day).

Models save and load as usual: ``MaskableDQN.load(path)``; ``DQN.load(path)`` also works and
gives an unmasked DQN with the same Q-network.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.vec_env import VecNormalize
from torch.nn import functional as F

from rl_lib.agents.fleet import FleetDQNPolicy

_TRANSITION_ARRAYS = (
    "observations", "next_observations", "actions", "rewards", "dones", "timeouts", "elapsed_min",
)  # fmt: skip


class MaskableReplayBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor
    next_action_masks: th.Tensor


class MaskableReplayBuffer(ReplayBuffer):
    """Replay buffer that also keeps the next state's action mask, with n-step returns.

    Pickling (``model.save_replay_buffer``) writes only the filled part of the arrays, so a
    100k buffer that is 10 % full costs 10 % of the full size on disk; unpickling restores
    the full-size arrays.

    :param n_steps: transitions summed into each sampled return (1: one-step TD).
    :param gamma: discount per decision, or per ``discount_tau_min`` minutes.
    :param discount_tau_min: None (per-decision discount) or the minutes one ``gamma`` stands for.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        *args,
        n_steps: int = 1,
        gamma: float = 0.99,
        discount_tau_min: float | None = None,
        **kwargs,
    ):
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError("MaskableReplayBuffer needs a Discrete action space")
        if n_steps < 1 or (discount_tau_min is not None and discount_tau_min <= 0):
            raise ValueError("n_steps must be >= 1 and discount_tau_min None or > 0")
        super().__init__(buffer_size, observation_space, action_space, *args, **kwargs)
        self.n_steps, self.gamma, self.discount_tau_min = n_steps, gamma, discount_tau_min
        self.elapsed_min = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        if self.n_envs != 1:
            # SB3's _get_samples draws its own env index per sample, which the masks could not follow.
            raise ValueError("MaskableReplayBuffer supports one env (the training env of rl_lib); got "
                             f"n_envs={self.n_envs}")  # fmt: skip
        self.next_action_masks = np.ones((self.buffer_size, self.n_envs, int(action_space.n)), dtype=bool)

    def add(self, obs, next_obs, action, reward, done, infos: list[dict[str, Any]]) -> None:
        try:
            self.next_action_masks[self.pos] = np.array([info["action_mask"] for info in infos])
        except KeyError:
            raise KeyError(
                "MaskableReplayBuffer needs info['action_mask'] at every step (the mask of the returned "
                "observation); the env does not provide it"
            ) from None
        if self.discount_tau_min is not None:
            try:
                self.elapsed_min[self.pos] = [info["elapsed_min"] for info in infos]
            except KeyError:
                raise KeyError("a time-aware discount (discount_tau_min) needs info['elapsed_min'] at every "
                               "step; the env does not provide it") from None  # fmt: skip
        super().add(obs, next_obs, action, reward, done, infos)

    def step_discounts(self, indices: np.ndarray) -> np.ndarray:
        """The discount of each stored transition (per decision, or by its elapsed minutes)."""
        if self.discount_tau_min is None:
            return np.full(indices.shape, self.gamma, dtype=np.float32)
        return (self.gamma ** (self.elapsed_min[indices, 0] / self.discount_tau_min)).astype(np.float32)

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> MaskableReplayBufferSamples:
        """n-step samples: ``G = sum_j (prod_{i<j} disc_i) r_j`` over the window's transitions,
        bootstrapped with ``prod disc`` at the window's last next state, and that state's mask.

        A window stops at the first episode end (done or timeout) and at the newest transition
        (``pos - 1``: what follows it in the ring is older data, or nothing yet).
        """
        steps = np.arange(self.n_steps)
        window = (batch_inds[:, None] + steps) % self.buffer_size  # (B, n)
        ends = (self.dones[window, 0] > 0) | (self.timeouts[window, 0] > 0)
        ends |= window == (self.pos - 1) % self.buffer_size
        ends[:, -1] = True
        last = ends.argmax(axis=1)  # offset of each window's last transition
        inside = steps[None, :] <= last[:, None]
        discount = self.step_discounts(window)
        through = np.cumprod(discount, axis=1)
        before = np.concatenate([np.ones((len(batch_inds), 1), np.float32), through[:, :-1]], axis=1)
        rewards = self._normalize_reward(self.rewards[window, 0], env)
        returns = (rewards * before * inside).sum(axis=1, keepdims=True)
        rows = np.arange(len(batch_inds))
        end = window[rows, last]
        if self.optimize_memory_usage:
            next_obs = self.observations[(end + 1) % self.buffer_size, 0]
        else:
            next_obs = self.next_observations[end, 0]
        dones = self.dones[end, 0] * (1 - self.timeouts[end, 0])
        return MaskableReplayBufferSamples(
            self.to_torch(self._normalize_obs(self.observations[batch_inds, 0], env)),
            self.to_torch(self.actions[batch_inds, 0]),
            self.to_torch(self._normalize_obs(next_obs, env)),
            self.to_torch(dones.reshape(-1, 1)),
            self.to_torch(returns.astype(np.float32)),
            self.to_torch(through[rows, last].reshape(-1, 1)),
            th.as_tensor(self.next_action_masks[end, 0], device=self.device),
        )

    @property
    def filled(self) -> int:
        """Number of transitions held (per env)."""
        return self.buffer_size if self.full else self.pos

    def _rows_kept(self, name: str) -> int:
        # With optimize_memory_usage, observations[pos] is the last transition's next observation.
        extra = 1 if (name == "observations" and self.optimize_memory_usage) else 0
        return min(self.pos + extra, self.buffer_size)

    def snapshot(self, rows_written_meanwhile: int) -> MaskableReplayBuffer:
        """A twin of this buffer that another thread may pickle while this one keeps filling.

        Until the buffer is full, rows ``[0, pos)`` are not written again before the ring wraps,
        so the twin shares them (no copy) as long as ``rows_written_meanwhile`` more transitions
        cannot reach them; otherwise (and once full) the twin holds copies.
        """
        twin = object.__new__(type(self))  # not copy.copy: that would pickle the arrays
        twin.__dict__.update(self.__dict__)
        share = not self.full and self.pos + rows_written_meanwhile < self.buffer_size
        for name in (*_TRANSITION_ARRAYS, "next_action_masks"):
            array = getattr(self, name, None)
            if array is not None:
                setattr(twin, name, array[: self._rows_kept(name)] if share else array.copy())
        return twin

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if not self.full:
            for name in (*_TRANSITION_ARRAYS, "next_action_masks"):
                if state.get(name) is not None:
                    state[name] = state[name][: self._rows_kept(name)]  # pickling copies the rows
            state["_trimmed"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        trimmed = state.pop("_trimmed", False)
        self.__dict__.update(state)
        if trimmed:
            for name in (*_TRANSITION_ARRAYS, "next_action_masks"):
                part = getattr(self, name, None)
                if part is None:
                    continue
                fill = True if name == "next_action_masks" else 0
                full = np.full((self.buffer_size, *part.shape[1:]), fill, dtype=part.dtype)
                full[: len(part)] = part
                setattr(self, name, full)


class MaskableDQN(DQN):
    """SB3 DQN whose action choice and TD target respect the env's action mask.

    Same constructor as :class:`stable_baselines3.DQN` (``n_steps`` included, here honoured by
    the masked buffer), plus:

    :param double_q: Double DQN target (van Hasselt et al. 2016): the online network chooses the
        next action among the feasible ones, the target network values it.
    :param reward_scale: rewards are multiplied by it in the TD target, so the Q-values are in
        scaled units. It keeps the returns (hundreds of reward units) within reach of the Huber
        loss's linear zone and of the gaps between vehicles.
    :param discount_tau_min: None (``gamma`` per decision) or the minutes of service day one
        ``gamma`` stands for (time-aware discount; see the module docstring).

    Policies: ``"MlpPolicy"`` (SB3's MLP) and ``"FleetPolicy"``
    (:class:`~rl_lib.agents.fleet.FleetDQNPolicy`). The replay buffer defaults to
    :class:`MaskableReplayBuffer`. The env must expose ``action_masks()`` (sb3-contrib
    convention) and put ``info["action_mask"]`` in every step's info.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **DQN.policy_aliases,
        "FleetPolicy": FleetDQNPolicy,
    }

    def __init__(
        self,
        *args,
        double_q: bool = False,
        reward_scale: float = 1.0,
        discount_tau_min: float | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("replay_buffer_class", MaskableReplayBuffer)
        self.double_q, self.reward_scale, self.discount_tau_min = double_q, reward_scale, discount_tau_min
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        if issubclass(self.replay_buffer_class, MaskableReplayBuffer):
            extra = {"n_steps": self.n_steps, "gamma": self.gamma, "discount_tau_min": self.discount_tau_min}
            self.replay_buffer_kwargs = {**self.replay_buffer_kwargs, **extra}
        with warnings.catch_warnings():
            # SB3 warns that it does not set up n-step returns for a custom buffer: done just above.
            warnings.filterwarnings("ignore", message=r"`n_steps=\d+` is ignored")
            super()._setup_model()
        if not isinstance(self.replay_buffer, MaskableReplayBuffer):
            raise TypeError("MaskableDQN needs a MaskableReplayBuffer (replay_buffer_class)")

    # ------------------------------------------------------------------ acting
    def q_values(self, observation: np.ndarray) -> np.ndarray:
        """Q-values (n_batch, n_actions) of a batch of observations, from the online network."""
        obs_tensor, _ = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            return self.q_net(obs_tensor).cpu().numpy()

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """Masked epsilon-greedy action (greedy when ``deterministic``).

        :param action_masks: boolean (n_actions,) or (n_batch, n_actions); None means no mask.
        """
        vectorized = self.policy.is_vectorized_observation(observation)
        obs = np.asarray(observation).reshape((-1, *self.observation_space.shape))
        n_actions = int(self.action_space.n)
        masks = np.ones((len(obs), n_actions), dtype=bool)
        if action_masks is not None:
            masks = np.asarray(action_masks, dtype=bool).reshape(len(obs), n_actions)
        if not deterministic and np.random.rand() < self.exploration_rate:
            actions = _random_feasible(masks)
        else:
            q = self.q_values(obs)
            actions = np.where(masks, q, -np.inf).argmax(axis=1)
        return (actions if vectorized else actions[0]), state

    def _sample_action(self, learning_starts: int, action_noise=None, n_envs: int = 1):
        masks = get_action_masks(self.env)
        if self.num_timesteps < learning_starts:
            actions = _random_feasible(masks)  # warm-up: uniform among feasible actions
        else:
            actions, _ = self.predict(self._last_obs, deterministic=False, action_masks=masks)
        return actions, actions

    # ---------------------------------------------------------------- learning
    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DQN update with the max of the TD target restricted to feasible next actions."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses, mean_q = [], []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            with th.no_grad():
                target_q = self.td_target(data)
            current_q_all = self.q_net(data.observations)
            current_q = th.gather(current_q_all, dim=1, index=data.actions.long())
            loss = F.smooth_l1_loss(current_q, target_q)
            if not th.isfinite(loss):
                raise DivergenceError(f"non-finite TD loss ({loss.item()}) at step {self.num_timesteps}")
            losses.append(loss.item())
            mean_q.append(current_q.mean().item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))
        self.logger.record("train/mean_q", float(np.mean(mean_q)))

    def td_target(self, data: MaskableReplayBufferSamples) -> th.Tensor:
        """``reward_scale * G + disc * (1 - done) * Q_target(s', a*)``, a* the feasible max (or the
        online network's feasible argmax with ``double_q``)."""
        next_q = self.q_net_target(data.next_observations)
        if self.double_q:
            online = self.q_net(data.next_observations).masked_fill(~data.next_action_masks, -th.inf)
            next_q = next_q.gather(1, online.argmax(dim=1, keepdim=True))
        else:
            next_q = next_q.masked_fill(~data.next_action_masks, -th.inf).max(dim=1, keepdim=True).values
        return self.reward_scale * data.rewards + (1 - data.dones) * data.discounts * next_q


class DivergenceError(RuntimeError):
    """Training produced NaN or infinite values; resuming from it would be pointless."""


def _random_feasible(masks: np.ndarray) -> np.ndarray:
    """One action per row, uniform among that row's True entries (global numpy RNG, as SB3)."""
    masks = np.atleast_2d(masks)
    counts = masks.sum(axis=1)
    if np.any(counts == 0):
        raise ValueError("an action mask allows no action")
    picks = (np.random.rand(len(masks)) * counts).astype(np.int64)
    # index of the picks-th True entry of each row
    return (np.cumsum(masks, axis=1) > picks[:, None]).argmax(axis=1)
