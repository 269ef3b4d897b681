"""Fleet-equivariant networks: every vehicle is scored by the same weights.

A flat MLP on DispatchEnv's observation has to learn "a low ETA is good" once per vehicle
slot, and its refuse output has nothing tying it to the vehicle scores. Here one small network
reads, for each vehicle k, ``[vehicle k's fields, booking fields, global fields]`` (the
observation's layout: :mod:`rl_lib.envs.dispatch_env`) and embeds it; a fleet context pools the
embeddings (DeepSets mean and max, optionally after one self-attention layer, so each vehicle's
embedding also sees the others'); a scoring head maps ``[embedding k, context]`` to the output of
action k, and a separate head maps ``[booking, global, context]`` to the refuse action's.

- **Equivariance**: permuting the vehicles permutes their outputs and leaves the refuse output
  unchanged (tested).
- **Any fleet size**: K is read from the observation's length at every call, so a model trained
  on 12 vehicles can score a 16-vehicle fleet (through :class:`rl_lib.inference.Dispatcher`).
- **Dueling** (optional): ``Q = V(s) + A(s, a) - mean of A over the feasible actions``, the mean
  taken over the actions the observation's ``feasible`` field allows (refusal always).

SB3 seams: :class:`FleetQNetwork` is a :class:`~stable_baselines3.dqn.policies.QNetwork` built by
:class:`FleetDQNPolicy` (``MaskableDQN("FleetPolicy", env, policy_kwargs=...)``); for MaskablePPO,
:class:`FleetActorCriticPolicy` puts the same scorer in front of the action distribution (per
vehicle logits plus a refuse logit) and a pooled critic in front of the value.
"""

from __future__ import annotations

from typing import Any

import torch as th
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

from rl_lib.envs.dispatch_env import N_BOOKING, N_GLOBAL, N_VEHICLE

CONTEXTS = ("deepsets", "attention")


def fleet_size(n_obs: int) -> int:
    """K from an observation length (``11 + 9 K + 7``); raises on a length no fleet gives."""
    k, rest = divmod(n_obs - N_BOOKING - N_GLOBAL, N_VEHICLE)
    if rest or k < 1:
        raise ValueError(f"an observation of {n_obs} fields is not DispatchEnv's layout for any fleet size")
    return k


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class FleetScorer(nn.Module):
    """``obs (B, 11 + 9 K + 7) -> (B, K + 1)``: one output per vehicle, then the refuse output.

    :param hidden: width of every layer.
    :param context: ``"deepsets"`` (mean and max of the vehicle embeddings) or ``"attention"``
        (one residual multi-head self-attention layer over the embeddings first).
    :param dueling: add a state value and centre the advantages on the feasible actions.
    :param heads: False builds the encoder and context only (:meth:`embed`: a critic's input).
    """

    def __init__(
        self, hidden: int = 128, context: str = "deepsets", dueling: bool = False, heads: bool = True
    ) -> None:
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        shared = N_BOOKING + N_GLOBAL
        self.hidden, self.context, self.dueling = hidden, context, dueling
        # The first layers of the encoder and of the scorer act on [per-vehicle part, part shared
        # by every vehicle]; a Linear on a concatenation is the sum of two Linears, so the shared
        # part is multiplied once per state rather than once per vehicle (half the cost).
        self.encode_vehicle, self.encode_shared = (
            nn.Linear(N_VEHICLE, hidden),
            nn.Linear(shared, hidden, False),
        )
        self.encode_out = nn.Linear(hidden, hidden)
        self.attention = (
            nn.MultiheadAttention(hidden, 4, batch_first=True) if context == "attention" else None
        )
        if not heads:
            return
        self.score_vehicle, self.score_context = (
            nn.Linear(hidden, hidden),
            nn.Linear(2 * hidden, hidden, False),
        )
        self.score_out = nn.Linear(hidden, 1)
        self.refuse = _mlp(shared + 2 * hidden, hidden, 1)
        self.value = _mlp(shared + 2 * hidden, hidden, 1) if dueling else None

    def embed(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """Vehicle embeddings (B, K, H), pooled context (B, 2H), shared fields (B, 18), vehicle fields."""
        batch = obs.shape[0]
        shared = th.cat([obs[:, :N_BOOKING], obs[:, -N_GLOBAL:]], dim=1)
        vehicles = obs[:, N_BOOKING:-N_GLOBAL].reshape(batch, N_VEHICLE, -1).transpose(1, 2)  # (B, K, 9)
        h = th.relu(self.encode_vehicle(vehicles) + self.encode_shared(shared).unsqueeze(1))
        h = th.relu(self.encode_out(h))
        if self.attention is not None:
            h = h + self.attention(h, h, h, need_weights=False)[0]
        pooled = th.cat([h.mean(dim=1), h.amax(dim=1)], dim=1)
        return h, pooled, shared, vehicles

    def forward(self, obs: th.Tensor) -> th.Tensor:
        h, pooled, shared, vehicles = self.embed(obs)
        per_vehicle = th.relu(self.score_vehicle(h) + self.score_context(pooled).unsqueeze(1))
        per_vehicle = self.score_out(per_vehicle).squeeze(2)
        out = th.cat([per_vehicle, self.refuse(th.cat([shared, pooled], dim=1))], dim=1)
        if self.value is None:
            return out
        # Feasible field (vehicle field 0) is the action mask; refusal is always allowed.
        allowed = th.cat([vehicles[:, :, 0], th.ones_like(out[:, :1])], dim=1)
        mean_advantage = (out * allowed).sum(dim=1, keepdim=True) / allowed.sum(dim=1, keepdim=True)
        return self.value(th.cat([shared, pooled], dim=1)) + out - mean_advantage


class FleetQNetwork(QNetwork):
    """SB3 Q-network whose Q-values come from a :class:`FleetScorer` (``net_arch`` is unused)."""

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Discrete,
        features_extractor: nn.Module,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        hidden: int = 128,
        context: str = "deepsets",
        dueling: bool = False,
    ) -> None:
        # BasePolicy's constructor, not QNetwork's: that one would build (and draw weights for) an MLP.
        BasePolicy.__init__(
            self, observation_space, action_space, features_extractor=features_extractor,
            normalize_images=normalize_images,
        )  # fmt: skip
        if fleet_size(features_dim) + 1 != int(action_space.n):
            raise ValueError(f"{features_dim} observation fields and {action_space.n} actions do not match "
                             "DispatchEnv's layout")  # fmt: skip
        self.net_arch, self.activation_fn, self.features_dim = net_arch or [], activation_fn, features_dim
        self.hidden, self.context, self.dueling = hidden, context, dueling
        self.q_net = FleetScorer(hidden, context, dueling)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(hidden=self.hidden, context=self.context, dueling=self.dueling)
        return data


class FleetDQNPolicy(DQNPolicy):
    """DQN policy (online and target network) made of :class:`FleetQNetwork` s.

    :param hidden: :class:`FleetScorer` width; :param context: its fleet context;
    :param dueling: its dueling head. Other parameters as :class:`~stable_baselines3.dqn.policies.DQNPolicy`.
    """

    def __init__(self, *args, hidden: int = 128, context: str = "deepsets", dueling: bool = False, **kwargs):
        self.fleet_kwargs = {"hidden": hidden, "context": context, "dueling": dueling}
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> FleetQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return FleetQNetwork(**net_args, **self.fleet_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.fleet_kwargs}


class _FleetActorCritic(nn.Module):
    """The ``mlp_extractor`` of :class:`FleetActorCriticPolicy`: latent_pi is the (B, K + 1)
    logits themselves, latent_vf the pooled context (the critic's input)."""

    def __init__(self, n_actions: int, hidden: int, context: str) -> None:
        super().__init__()
        self.actor = FleetScorer(hidden, context)
        # Separate weights: PPO's value loss does not steer the logits.
        self.critic = FleetScorer(hidden, context, heads=False)
        self.latent_dim_pi, self.latent_dim_vf = n_actions, N_BOOKING + N_GLOBAL + 2 * hidden

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        return self.actor(features)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        _, pooled, shared, _ = self.critic.embed(features)
        return th.cat([shared, pooled], dim=1)


class FleetActorCriticPolicy(MaskableActorCriticPolicy):
    """MaskablePPO policy: per-vehicle logits plus a refuse logit from a :class:`FleetScorer`, and a
    critic on the pooled fleet context (``MaskablePPO(FleetActorCriticPolicy, env, policy_kwargs=...)``).

    SB3's action head (a Linear from the latent to the logits) would mix the vehicles again, so it
    is replaced by the identity: the scorer's outputs are the logits.
    """

    def __init__(self, *args, hidden: int = 128, context: str = "deepsets", **kwargs):
        self.fleet_kwargs = {"hidden": hidden, "context": context}
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = _FleetActorCritic(int(self.action_space.n), **self.fleet_kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()
        if self.ortho_init:  # small initial logits, as SB3 gives its action head (gain 0.01)
            for head in (self.mlp_extractor.actor.score_out, self.mlp_extractor.actor.refuse[-1]):
                self.init_weights(head, gain=0.01)
        # The optimizer was made over the replaced Linear's parameters: make it again.
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self.fleet_kwargs}
