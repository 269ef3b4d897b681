"""What a DQN's Q-values say about its learning, measured on the evaluation days.

A learning curve alone cannot tell a network that has not learned from one that learned the wrong
thing. Played greedily on the evaluation days, each decision gives:

- ``mean_q``, ``mean_return``: the chosen action's Q-value against the discounted Monte-Carlo return
  that followed it, with the agent's own reward scale and discount (per decision, or time-aware).
  Far above the return: overestimation; far below: the values have not caught up.
- ``action_gap``: median of best minus second-best feasible Q-value (decisions with two or more
  feasible actions). Next to ``reward_gap`` (the median of the same gap in immediate scaled reward,
  which the network must resolve to beat the greedy rule) it shows whether the Q-values can even
  tell the vehicles apart.
- ``refusal_share``: share of decisions refused while a vehicle was feasible.
- ``agreement_with_insertion``: share of decisions equal to greedy insertion's on the same state
  (the best immediate reward); 1.0 is a myopic agent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rl_lib.policies.heuristics import REFUSE, InsertionPolicy

DIAGNOSTICS = (
    "mean_q",
    "mean_return",
    "action_gap",
    "reward_gap",
    "refusal_share",
    "agreement_with_insertion",
)


def step_discount(model, elapsed_min: np.ndarray) -> np.ndarray:
    """The discount the model's TD target applies after each step (see MaskableDQN)."""
    tau = getattr(model, "discount_tau_min", None)
    if tau is None:
        return np.full(len(elapsed_min), model.gamma)
    return model.gamma ** (np.asarray(elapsed_min) / tau)


def evaluate_with_diagnostics(model, env, n_episodes: int, policy: str = "agent", seed: int = 0):
    """Play the first ``n_episodes`` days of ``env`` greedily with a MaskableDQN.

    :return: the per-day KPI rows (as :func:`rl_lib.evaluation.evaluate_agent` gives them) and a dict
        of the diagnostics above over every decision.
    """
    import time

    from rl_lib.evaluation import episode_row

    scale = getattr(model, "reward_scale", 1.0)
    insertion_policy = InsertionPolicy()
    rows, q_taken, returns, gaps, reward_gaps = [], [], [], [], []
    refused_feasible = agree = decisions = 0
    k = env.n_vehicles
    for i in range(min(n_episodes, len(env.days))):
        obs, _ = env.reset(options={"day_index": i})
        rewards, elapsed = [], []
        terminated, start = False, time.perf_counter()
        while not terminated:
            mask = env.action_masks()
            q = model.q_values(obs[None])[0]
            action = int(np.where(mask, q, -np.inf).argmax())
            insertion = env.insertion
            greedy = insertion_policy.choose(env.core, insertion)
            agree += action == (k if greedy == REFUSE else greedy)
            refused_feasible += action == k and insertion.n_feasible > 0
            feasible_q = np.sort(q[mask])
            if len(feasible_q) >= 2:
                gaps.append(feasible_q[-1] - feasible_q[-2])
                immediate = np.append(
                    _immediate_rewards(env, insertion)[mask[:-1]], -env.core.weights.refusal_penalty
                )
                second, best = np.sort(immediate)[-2:]
                reward_gaps.append(scale * (best - second))
            q_taken.append(q[action])
            obs, reward, terminated, _, info = env.step(action)
            rewards.append(scale * reward)
            elapsed.append(info["elapsed_min"])
            decisions += 1
        rows.append(episode_row(policy, seed, env.days[i], info["kpis"], time.perf_counter() - start))
        discount = step_discount(model, np.array(elapsed))
        ret, day_returns = 0.0, np.zeros(len(rewards))
        for t in range(len(rewards) - 1, -1, -1):  # the last step is terminal: nothing after it
            ret = rewards[t] + (discount[t] * ret if t < len(rewards) - 1 else 0.0)
            day_returns[t] = ret
        returns.extend(day_returns)
    diagnostics = {
        "mean_q": float(np.mean(q_taken)),
        "mean_return": float(np.mean(returns)),
        "action_gap": float(np.median(gaps)) if gaps else float("nan"),
        "reward_gap": float(np.median(reward_gaps)) if reward_gaps else float("nan"),
        "refusal_share": refused_feasible / decisions,
        "agreement_with_insertion": agree / decisions,
    }
    return pd.DataFrame(rows), diagnostics


def _immediate_rewards(env, insertion) -> np.ndarray:
    """Each vehicle's immediate reward for the pending booking (what greedy insertion maximises)."""
    return env.core.serve_reward(insertion.booking, insertion.deadhead_km, insertion.lateness)
