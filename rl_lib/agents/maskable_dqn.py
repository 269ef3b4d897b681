"""DQN with invalid-action masking, as a small extension of Stable-Baselines3's DQN.

SB3's DQN has no action masking. Three seams add it without forking the algorithm:

- :class:`MaskableReplayBuffer` stores, with each transition, the action mask of the *next*
  state (read from ``info["action_mask"]``, which :class:`~rl_lib.envs.DispatchEnv` returns
  for the observation it returns), and pickles only its filled part.
- :meth:`MaskableDQN.train` takes the TD target's max over the next state's feasible actions
  only: ``r + gamma * (1 - done) * max_{a' in mask(s')} Q_target(s', a')``.
- :meth:`MaskableDQN.predict` is masked: greedy among feasible actions, and epsilon-exploration
  draws uniformly among feasible actions (also during the ``learning_starts`` warm-up).

Models save and load as usual: ``MaskableDQN.load(path)``; ``DQN.load(path)`` also works and
gives an unmasked DQN with the same Q-network.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import VecNormalize
from torch.nn import functional as F

_TRANSITION_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class MaskableReplayBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None
    next_action_masks: th.Tensor


class MaskableReplayBuffer(ReplayBuffer):
    """Replay buffer that also keeps the next state's action mask.

    Pickling (``model.save_replay_buffer``) writes only the filled part of the arrays, so a
    100k buffer that is 10 % full costs 10 % of the full size on disk; unpickling restores
    the full-size arrays.
    """

    def __init__(
        self, buffer_size: int, observation_space: spaces.Space, action_space: spaces.Space, *args, **kwargs
    ):
        if not isinstance(action_space, spaces.Discrete):
            raise ValueError("MaskableReplayBuffer needs a Discrete action space")
        super().__init__(buffer_size, observation_space, action_space, *args, **kwargs)
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
        super().add(obs, next_obs, action, reward, done, infos)

    def _get_samples(
        self, batch_inds: np.ndarray, env: VecNormalize | None = None
    ) -> MaskableReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        env_indices = (
            np.random.randint(0, high=self.n_envs, size=(len(batch_inds),)) if self.n_envs > 1 else 0
        )
        masks = self.next_action_masks[batch_inds, env_indices]
        return MaskableReplayBufferSamples(
            *samples[:5], samples.discounts, th.as_tensor(masks, device=self.device)
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

    Same constructor as :class:`stable_baselines3.DQN`; the replay buffer defaults to
    :class:`MaskableReplayBuffer`. The env must expose ``action_masks()`` (sb3-contrib
    convention) and put ``info["action_mask"]`` in every step's info.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("replay_buffer_class", MaskableReplayBuffer)
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
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
            discounts = data.discounts if data.discounts is not None else self.gamma
            with th.no_grad():
                next_q = self.q_net_target(data.next_observations)
                next_q = next_q.masked_fill(~data.next_action_masks, -th.inf).max(dim=1).values.reshape(-1, 1)
                target_q = data.rewards + (1 - data.dones) * discounts * next_q
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
