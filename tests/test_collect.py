"""Experience collection: records -> transitions (the join's rules, validation), the Parquet store, and
the collector on a real redis-server (dead letter, dedup across a crash, waiting entries, claims from a
dead consumer); finally a day played through the real service, collected, and checked against what
DispatchEnv gives for the same actions."""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pytest

from rl_lib.envs.core import RewardWeights
from rl_lib.envs.dispatch_env import N_BOOKING, DispatchEnv, observation_size
from rl_lib.feedback.store import ExperienceStore
from rl_lib.feedback.transitions import COLUMNS, DayHistory, check_decision, join
from rl_lib.serving.decision_log import DECISION_SCHEMA, OUTCOME_SCHEMA, array_field, check_outcome

HAS_REDIS = shutil.which("redis-server") is not None
K = 2
DAY = "2027-01-04"
T0 = 1.8e9  # time_unix of the hand-made records
W = RewardWeights()
P = W.refusal_penalty


def serve(priority_weight: float, deadhead_km: float, lateness_min: float) -> float:
    """The env's serve reward under the default weights."""
    value = W.service_reward * priority_weight
    return value - W.deadhead_per_km * deadhead_km - W.lateness_per_min * lateness_min


def decision(i: int, now: float, feasible=(True, True), action: int = 0, day: str = DAY,
             region: str = "all", priority: str = "normal", deadhead_km: float = 3.0,
             lateness_min: float = 2.0) -> dict:  # fmt: skip
    """A decision record as the service writes it (the fields the collector reads, and a few more)."""
    mask = np.array([*feasible, True])
    obs = np.full(observation_size(K), 0.25, dtype=np.float32)
    obs[N_BOOKING : N_BOOKING + K] = mask[:K]
    planned = None
    if action < K:
        planned = {"pickup_min": now + 30.0, "lateness_min": lateness_min, "deadhead_km": deadhead_km,
                   "dropoff_min": now + 60.0}  # fmt: skip
    return {
        "schema": DECISION_SCHEMA, "decision_id": f"{day}-{region}-{i}", "time_unix": T0 + i,
        "experiment": "model-only", "service_day": day, "region": region, "now_min": float(now),
        "booking_id": f"b{i}", "priority": priority, "mobility": "ambulatory",
        "unit": f"{day}/{region}/block0", "arm": "agent", "policy": "insertion", "fallback_reason": None,
        "model_version": None, "n_vehicles": K,
        "action": action, "vehicle_id": f"v{action}" if action < K else None,
        "observation": array_field(obs), "mask": array_field(mask), "reward_at_decision": 0.0,
        "planned": planned, "decision_ms": 1.0,
    }  # fmt: skip


def forced(i: int, now: float, **kw) -> dict:
    return decision(i, now, feasible=(False, False), action=K, **kw)


def outcome(record: dict, status: str = "completed", deadhead_km: float = 4.0, lateness_min: float = 1.0,
            after_s: float = 100.0) -> dict:  # fmt: skip
    facts = {"pickup_min": None, "dropoff_min": None, "lateness_min": None, "deadhead_km": None}
    if status == "completed":
        facts = {"pickup_min": record["now_min"] + 30.0, "dropoff_min": record["now_min"] + 60.0,
                 "lateness_min": lateness_min, "deadhead_km": deadhead_km}  # fmt: skip
    return {"schema": OUTCOME_SCHEMA, "time_unix": record["time_unix"] + after_s,
            "decision_id": record["decision_id"], "status": status, **facts}  # fmt: skip


def keyed(records: list[dict]) -> dict:
    return {f"e{i}": r for i, r in enumerate(records)}


def by_id(result) -> dict:
    return {t.decision_id: t for t in result.transitions}


# ------------------------------------------------------------------------------------------ the join
def test_the_join_makes_the_envs_transitions_and_folds_forced_refusals():
    d = [forced(0, 480), decision(1, 485, priority="dialysis"), forced(2, 490), forced(3, 490),
         decision(4, 500, action=K), decision(5, 505), decision(6, 510), decision(7, 520)]  # fmt: skip
    other = decision(8, 400, region="north")  # another region: its own chain, not closed
    decisions = keyed([d[4], d[0], other, d[1], d[3], d[2], d[5], d[6], d[7]])  # not in now_min order
    outcomes = keyed([outcome(d[1], deadhead_km=4.0, lateness_min=1.5), outcome(d[5], "cancelled"),
                      outcome(d[7], "no_show")])  # fmt: skip
    result = join(decisions, outcomes)
    got = by_id(result)
    assert list(got) == [d[1]["decision_id"], d[4]["decision_id"], d[5]["decision_id"]]
    t1, t4, t5 = got.values()
    # The forced refusals before the first presented decision and between it and the next are folded in,
    # in the env's order (carried, own, forced after).
    assert t1.reward == float(sum([-P, serve(2.0, 4.0, 1.5), -P, -P])) and t1.outcome_status == "completed"
    np.testing.assert_array_equal(t1.next_observation, json_obs(d[4]))
    np.testing.assert_array_equal(t1.next_mask, [True, True, True])
    assert t1.elapsed_min == 15.0 and not t1.done and t1.action == 0 and t1.schema_version == 1
    assert (t4.reward, t4.outcome_status, t4.elapsed_min) == (-P, "refused", 5.0)
    assert (t5.reward, t5.outcome_status) == (0.0, "cancelled")
    assert set(t1.row()) == set(COLUMNS)

    # d6 has no outcome yet, so it and everything after it wait; so does the other region's decision.
    def ids(keys):
        return sorted(decisions[k]["decision_id"] for k in keys)

    assert ids(result.waiting_decisions) == sorted(r["decision_id"] for r in (d[6], d[7], other))
    assert ids(result.used_decisions) == sorted(r["decision_id"] for r in d[:6])  # forced ones too
    assert len(result.used_outcomes) == 2 and len(result.waiting_outcomes) == 1
    # Closing the day does not decide d6's fate; the horizon does (no_outcome: the planned reward).
    rest = {k: decisions[k] for k in result.waiting_decisions}
    left = {k: outcomes[k] for k in result.waiting_outcomes}
    assert join(rest, left, closed_days={DAY}).transitions == []
    late = join(rest, left, now_unix=T0 + 7 * 3600)
    t6, t7, t8 = (by_id(late)[r["decision_id"]] for r in (d[6], d[7], other))
    assert (t6.outcome_status, t6.reward) == ("no_outcome", serve(1.0, 3.0, 2.0))
    assert (t7.outcome_status, t7.reward, t7.done, t7.elapsed_min) == ("no_show", 0.0, True, 0.0)
    np.testing.assert_array_equal(t7.next_observation, np.zeros(observation_size(K), np.float32))
    np.testing.assert_array_equal(t7.next_mask, [True, True, True])
    assert t8.done and t8.region == "north"
    assert not late.waiting_decisions and not late.waiting_outcomes


def json_obs(record: dict) -> np.ndarray:
    return np.asarray(record["observation"]["data"], dtype=np.float32)


def test_the_join_rejects_what_contradicts_the_log_and_presents_a_day_without_choices():
    d = [decision(1, 480), decision(2, 490), decision(3, 500, action=K), decision(4, 510)]
    late = decision(9, 485)  # decided between d1 and d2, but d1's transition (next: d2) is already stored
    history = {(DAY, "all"): DayHistory({d[0]["decision_id"]: 490.0})}
    outcomes = keyed([outcome(d[2]), outcome(d[1]), outcome(d[1], "cancelled"), outcome(late)])
    result = join(keyed([d[1], late, d[2], d[3], dict(d[3], time_unix=T0 + 50)]), outcomes, history=history)
    reasons = list(result.rejected_decisions.values()) + list(result.rejected_outcomes.values())
    assert any("out of order" in r for r in reasons) and any("second record" in r for r in reasons)
    assert any("which refused its booking" in r for r in reasons)
    assert any("second outcome" in r for r in reasons)
    assert any("was rejected: out of order" in r for r in reasons)  # the late decision's outcome
    assert [t.decision_id for t in result.transitions] == [d[1]["decision_id"], d[2]["decision_id"]]
    # A stored decision that comes again is a re-delivery, not out of order: the same transition again.
    again = join(keyed([d[0], d[1]]), {}, history=history, now_unix=T0 + 7 * 3600)
    assert [t.decision_id for t in again.transitions] == [d[0]["decision_id"], d[1]["decision_id"]]
    assert not again.rejected_decisions
    closed = {(DAY, "all"): DayHistory({d[3]["decision_id"]: math.inf})}
    after_close = join(keyed([decision(5, 600)]), {}, history=closed)
    assert "was closed" in after_close.rejected_decisions["e0"]
    # No booking of the day had a feasible vehicle: the first is presented and the others folded in.
    none = join(keyed([forced(i, 480 + i) for i in range(3)]), {}, closed_days={DAY})
    (only,) = none.transitions
    assert (only.decision_id, only.reward, only.outcome_status) == (f"{DAY}-all-0", -3 * P, "refused")
    assert only.done
    assert len(none.used_decisions) == 3


def test_records_are_validated_field_by_field():
    good = decision(1, 480)
    assert check_decision(good) is None and check_outcome(outcome(good)) is None

    def edited(record, **changes):
        return {**json.loads(json.dumps(record)), **changes}

    obs3 = array_field(np.zeros(observation_size(3), np.float32))
    cases = {
        "schema": edited(good, schema="rl_lib.decision/2"),
        "missing field(s) mask": {k: v for k, v in good.items() if k != "mask"},
        "n_vehicles": edited(good, n_vehicles="2"),
        "expected [36]": edited(good, observation=obs3),
        "outside [0, 1]": edited(good, observation=array_field(np.full(observation_size(K), 2, np.float32))),
        "dtype float64": edited(good, observation=array_field(np.zeros(observation_size(K)))),
        "refusing": edited(good, mask=array_field(np.array([True, True, False]))),
        "is masked": edited(decision(2, 480, feasible=(False, True), action=0)),
        "disagree": edited(good, mask=array_field(np.array([True, False, True]))),
        "planned": edited(good, planned=None), "service_day": edited(good, service_day="2027-13-01"),
        "priority": edited(good, priority="urgent"), "now_min": edited(good, now_min=-1.0),
        "action": edited(good, action=True), "model_version": edited(good, model_version=3),
    }  # fmt: skip
    for expected, record in cases.items():
        reason = check_decision(record)
        assert reason is not None and expected in reason, (expected, reason)
    bad_outcomes = {
        "needs lateness_min": {**outcome(good), "lateness_min": None},
        "deadhead_km": {**outcome(good), "deadhead_km": -1.0}, "status": {**outcome(good), "status": "lost"},
        "schema": {**outcome(good), "schema": DECISION_SCHEMA},
    }  # fmt: skip
    for expected, record in bad_outcomes.items():
        reason = check_outcome(record)
        assert reason is not None and expected in reason, (expected, reason)


# ------------------------------------------------------------------------------------------ the store
def test_the_store_writes_atomic_deduplicated_content_named_parts(tmp_path):
    decisions = [decision(i, 480 + 10 * i) for i in range(4)] + [decision(9, 480, day="2027-01-05")]
    rows = join(keyed(decisions), {}, now_unix=T0 + 7 * 3600).transitions
    store = ExperienceStore(tmp_path / "a")
    first = store.write(rows[:3])
    assert (first.written, first.duplicates) == (3, 0)
    assert [p.parent.name for p in first.parts] == ["day=2027-01-04"]
    again = store.write(rows)  # a re-delivered batch: its known rows are dropped
    assert (again.written, again.duplicates) == (2, 3)
    assert store.days() == [DAY, "2027-01-05"] and store.count() == 5 and store.count(days=[DAY]) == 4
    frame = store.read(start=DAY, end=DAY)
    assert list(frame.columns) == list(COLUMNS) and frame["now_min"].is_monotonic_increasing
    assert frame["decision_id"].is_unique and len(store.read(days=["2027-01-05"])) == 1
    assert frame["observation"][0].dtype == np.float32 and frame["next_mask"][0].dtype == bool
    assert frame["model_version"].isna().all() and frame["action"].dtype == np.int32
    # The same rows make the same part, byte for byte: its name derives from its content.
    other = ExperienceStore(tmp_path / "b").write(rows[:3])
    assert other.parts[0].name == first.parts[0].name
    assert other.parts[0].read_bytes() == first.parts[0].read_bytes()
    stale = first.parts[0].parent / ".part-x.parquet.123.tmp"  # what a writer killed mid-write leaves
    stale.write_bytes(b"half")
    assert store.read(days=[DAY]).shape[0] == 4  # never read
    store.write(join(keyed([decision(20, 700)]), {}, now_unix=T0 + 7 * 3600).transitions)
    assert not stale.exists() and store.count() == 6
    assert store.history([DAY])[(DAY, "all")].covered[f"{DAY}-all-20"] == math.inf
    assert ExperienceStore(tmp_path / "none").read().empty


# ------------------------------------------------------------------------------------------ the collector
@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if not HAS_REDIS:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis")
    from rl_lib.serving.redis_server import LocalRedis

    server = LocalRedis(tmp_path_factory.mktemp("redis"), port=0).start()
    yield server.url
    server.stop()


@pytest.fixture
def client(redis_url):
    import redis

    c = redis.Redis.from_url(redis_url, decode_responses=True)
    c.flushall()
    return c


def add(client, records, prefix="t"):
    """XADD each record as the decision log does: field ``record``, compact JSON."""
    for r in records:
        stream = f"{prefix}:decisions" if r["schema"] == DECISION_SCHEMA else f"{prefix}:outcomes"
        client.xadd(stream, {"record": json.dumps(r, separators=(",", ":"))})


def run(client, store, **kw):
    from rl_lib.feedback.collect import collect

    return collect(client, store, prefix="t", consumer=kw.pop("consumer", "c1"), **kw)


def pending(client, stream: str, group: str = "feedback") -> int:
    return client.xpending(f"t:{stream}", group)["pending"]


def dead_letters(client) -> list[dict]:
    return [fields for _, fields in client.xrange("t:dead_letter")]


def test_every_bad_record_goes_to_the_dead_letter_with_its_reason(client, tmp_path):
    from rl_lib.feedback.collect import TRIMMED

    refused = decision(1, 480, action=K)
    cancelled_twice = decision(2, 490)
    nan_text = json.dumps(decision(3, 480)).replace('"now_min": 480.0', '"now_min": NaN')
    client.xgroup_create("t:decisions", "feedback", id="0", mkstream=True)
    client.xadd("t:decisions", {"record": json.dumps(decision(4, 480))})
    trimmed_id = client.xreadgroup("feedback", "c1", {"t:decisions": ">"})[0][1][0][0]
    client.xdel("t:decisions", trimmed_id)  # delivered to c1, then trimmed away before collection
    client.xadd("t:decisions", {"other": "x"})
    client.xadd("t:decisions", {"record": "{not json"})
    client.xadd("t:decisions", {"record": nan_text})
    add(client, [
        {k: v for k, v in decision(5, 480).items() if k != "observation"},
        decision(6, 480, feasible=(False, True), action=0),
        {**outcome(decision(7, 480)), "lateness_min": None},
        {**outcome(decision(8, 480)), "deadhead_km": -2.0}, refused, outcome(refused),
        cancelled_twice, outcome(cancelled_twice, "cancelled"), outcome(cancelled_twice),
    ])  # fmt: skip
    report = run(client, ExperienceStore(tmp_path))
    reasons = [f["reason"] for f in dead_letters(client)]
    for expected in (TRIMMED, "no 'record' field", "not JSON", "NaN is not a finite number",
                     "missing field(s) observation", "is masked", "needs lateness_min", "deadhead_km",
                     "which refused its booking", "second outcome"):  # fmt: skip
        assert sum(expected in r for r in reasons) == 1, (expected, reasons)
    assert report.rejected == len(reasons) == 10
    entries = dead_letters(client)
    assert {e["stream"] for e in entries} == {"t:decisions", "t:outcomes"}
    assert all(e["entry_id"] for e in entries) and any(e["record"] == "{not json" for e in entries)
    # Rejects are acknowledged. The refusal became a transition (its next decision is there); that next
    # decision and its (first) outcome wait for the day to go on.
    assert report.written == 1 and report.waiting == 2
    assert pending(client, "decisions") == 1 and pending(client, "outcomes") == 1
    assert report.read == 13


def test_collecting_twice_or_after_a_crash_before_the_ack_duplicates_nothing(client, tmp_path, monkeypatch):
    import redis

    store = ExperienceStore(tmp_path)

    def day(name):
        d = [forced(0, 470, day=name), decision(1, 480, day=name), forced(2, 485, day=name),
             decision(3, 490, day=name, action=K), decision(4, 500, day=name)]  # fmt: skip
        return d + [outcome(d[1]), outcome(d[4], "cancelled")]

    add(client, day(DAY))
    first = run(client, store, close_days=[DAY])
    assert (first.read, first.written, first.duplicates, first.waiting) == (7, 3, 0, 0)
    assert pending(client, "decisions") == pending(client, "outcomes") == 0  # forced refusals too
    second = run(client, store, close_days=[DAY])
    assert (second.read, second.written) == (0, 0)
    # A crash after the store write, before the acknowledgement: the next pass re-reads the entries,
    # makes the same transitions, and the store drops them.
    add(client, day("2027-01-05"))

    def crash(*args, **kwargs):
        raise ConnectionError("killed between the store write and XACK")

    with monkeypatch.context() as m:
        m.setattr(redis.client.Pipeline, "xack", crash)
        with pytest.raises(ConnectionError):
            run(client, store, close_days=["2027-01-05"])
    # The first page's two transitions were written (the last waits for the final step), none acknowledged.
    assert store.count() == 5 and pending(client, "decisions") == 5 and pending(client, "outcomes") == 2
    scalars = [c for c in COLUMNS if "observation" not in c and "mask" not in c]
    before = store.read()[scalars]
    after_crash = run(client, store, close_days=["2027-01-05"], batch=2)  # the pending list, paged
    assert (after_crash.read, after_crash.written, after_crash.duplicates) == (7, 1, 2)
    assert pending(client, "decisions") == pending(client, "outcomes") == 0
    frame = store.read()
    assert frame["decision_id"].is_unique and len(frame) == 6
    assert (
        frame[scalars][frame["decision_id"].isin(before["decision_id"])].reset_index(drop=True).equals(before)
    )
    # The rewards fold the forced refusals, as the env does.
    rewards = dict(zip(frame["decision_id"], frame["reward"], strict=True))
    assert rewards[f"{DAY}-all-1"] == float(sum([-P, serve(1.0, 4.0, 1.0), -P]))
    assert rewards[f"{DAY}-all-3"] == -P and rewards[f"{DAY}-all-4"] == 0.0


def test_a_waiting_decision_becomes_a_transition_when_its_outcome_arrives(client, tmp_path):
    store = ExperienceStore(tmp_path)
    d1, d2 = decision(1, 480), decision(2, 490, action=K)
    add(client, [d1, d2])
    report = run(client, store)
    assert (report.written, report.waiting) == (0, 2) and pending(client, "decisions") == 2
    add(client, [outcome(d1)])
    report = run(client, store)
    assert (report.read, report.written, report.waiting) == (3, 1, 1)  # d2 waits for its day to close
    assert store.read()["next_observation"][0].tolist() == json_obs(d2).tolist()
    # The horizon closes the day and takes a decision without outcome as no_outcome.
    d3 = decision(3, 500, day="2027-01-05")
    add(client, [d3])
    report = run(client, store, now_unix=T0 + 7 * 3600)
    assert (report.written, report.waiting) == (2, 0)
    frame = store.read().set_index("decision_id")
    assert (
        frame.loc[d2["decision_id"], "done"]
        and frame.loc[d3["decision_id"], "outcome_status"] == "no_outcome"
    )
    assert frame.loc[d3["decision_id"], "reward"] == serve(1.0, 3.0, 2.0)
    # An outcome whose decision never comes is dead-lettered once the horizon has passed.
    add(client, [outcome(decision(99, 480))])
    assert run(client, store).waiting == 1
    report = run(client, store, now_unix=T0 + 7 * 3600)
    assert report.rejected == 1 and "no decision" in dead_letters(client)[-1]["reason"]


def test_entries_of_a_dead_consumer_are_claimed(client, tmp_path):
    from rl_lib.feedback.collect import TRIMMED

    store = ExperienceStore(tmp_path)
    d = [decision(i, 480 + 10 * i, action=K) for i in range(4)]
    client.xgroup_create("t:decisions", "feedback", id="0", mkstream=True)
    client.xgroup_create("t:outcomes", "feedback", id="0", mkstream=True)
    add(client, d)
    entries = client.xreadgroup("feedback", "dead", {"t:decisions": ">"})[0][1]  # read, then the worker died
    client.xdel("t:decisions", entries[-1][0])
    early = run(client, store, consumer="alive", claim_idle_ms=60_000)
    assert (early.claimed, early.read) == (0, 0)  # not idle long enough: still the dead consumer's
    assert early.rejected == 1 and dead_letters(client)[0]["reason"] == TRIMMED  # its trimmed entry
    time.sleep(0.02)
    report = run(client, store, consumer="alive", claim_idle_ms=10, close_days=[DAY])
    assert (report.claimed, report.read, report.written, report.rejected) == (3, 3, 3, 0)
    consumers = {c["name"]: c["pending"] for c in client.xpending("t:decisions", "feedback")["consumers"]}
    assert consumers.get("dead", 0) == 0 and pending(client, "decisions") == 0
    assert store.read()["done"].tolist() == [False, False, True]


# ------------------------------------------------------------------------------------------ realistic
def test_a_day_played_through_the_service_is_collected_as_the_env_would_teach_it(
    redis_url, tmp_path, monkeypatch
):
    """The service, a real Redis, the collector: the transitions are DispatchEnv's for the same actions
    (observation, mask, reward with the forced refusals folded, next state, done, elapsed minutes)."""
    pytest.importorskip("fastapi")
    import redis
    import yaml
    from fastapi.testclient import TestClient

    from rl_lib.feedback.collect import collect
    from rl_lib.scenarios.synthetic import SyntheticScenario
    from rl_lib.serving.app import create_app
    from rl_lib.serving.server import ServeOptions, build_service
    from rl_lib.serving.simulator import play_day

    redis.Redis.from_url(redis_url).flushall()
    token = "collect-test-token-0123456789"
    monkeypatch.setenv("RL_LIB_SERVICE_TOKEN", token)
    experiment = tmp_path / "ab.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "controls", "salt": "s", "unit": "booking",
        "arms": [{"name": "near", "policy": "nearest", "weight": 0.5},
                 {"name": "ins", "policy": "insertion", "weight": 0.5}]}))  # fmt: skip
    options = ServeOptions(model=str(tmp_path / "no-model"), experiment=str(experiment),
                           state_dir=str(tmp_path / "state"))  # fmt: skip
    service, security = build_service(options, redis_url)
    http = TestClient(create_app(service, security))

    def post(path, body):
        response = http.post(path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
        return response.json()

    (day,) = SyntheticScenario().days("test", 1)
    try:
        played = play_day(day, post, DAY, cancel_share=0.2, seed=3)
    finally:
        service.close()
    store = ExperienceStore(tmp_path / "store")
    # Pages of 16 entries per stream: the join works on partial working sets, outcomes lagging behind.
    report = collect(
        redis.Redis.from_url(redis_url, decode_responses=True), store, close_days=[DAY], batch=16
    )
    assert report.read == day.n_bookings + played.outcomes_posted
    assert (report.rejected, report.waiting, report.duplicates) == (0, 0, 0)
    rows = store.read()
    assert set(rows["arm"]) == {"near", "ins"} and rows["model_version"].isna().all()
    # The controls refuse only when no vehicle is feasible: every refusal is a forced one, folded in.
    assert set(rows["outcome_status"]) == {"completed", "cancelled"}

    env = DispatchEnv([day], reward=RewardWeights())
    obs, info = env.reset(options={"day_index": 0})
    terminated, folded = False, 0
    for row in rows.itertuples():
        assert not terminated
        np.testing.assert_array_equal(row.observation, obs)
        np.testing.assert_array_equal(row.mask, info["action_mask"])
        obs, reward, terminated, _, info = env.step(row.action)
        folded += info["auto_refused"]
        if row.outcome_status == "cancelled":  # the trip did not happen: only the folded penalties
            assert row.reward == -P * info["auto_refused"]
        else:
            assert row.reward == reward
        assert (row.done, row.elapsed_min) == (terminated, info["elapsed_min"])
        np.testing.assert_array_equal(row.next_observation, obs)
        np.testing.assert_array_equal(row.next_mask, info["action_mask"])
    assert terminated and folded > 0 and len(rows) + folded == day.n_bookings
