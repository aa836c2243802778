"""The CV-aware scheduler: decisions on fold means, whole configurations stopped together."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler

from raycity.tune.scheduler import FoldMeanASHA

QUALITY = {"good": 0.8, "mid": 0.5, "bad": 0.2}


def trial(config_id, fold):
    return SimpleNamespace(config={"variant": {"config_id": config_id}, "fold": fold})


def curve(config_id, fold, epoch):
    """Deterministic: better configurations are better on every fold; folds differ a little."""
    return QUALITY[config_id] + 0.02 * epoch + 0.01 * (fold - 2)


def test_rungs():
    s = FoldMeanASHA("m", folds=3, max_t=10, grace_period=1, reduction_factor=3)
    assert s.rungs == [1, 3, 9]


class FakeController:
    """Stands in for Tune's controller: holds trials and records which ones were stopped."""

    def __init__(self, trials):
        self.trials, self.stopped = trials, []

    def get_trials(self):
        return self.trials

    def stop_trial(self, trial):
        self.stopped.append(trial)
        trial.status = "TERMINATED"

    def _set_trial_status(self, trial, status):
        trial.status = status


def test_a_configuration_waits_for_all_folds_and_stops_as_a_whole():
    s = FoldMeanASHA("m", folds=3, max_t=6, grace_period=2, reduction_factor=2)
    trials = {(c, f): trial(c, f) for c in QUALITY for f in (1, 2, 3)}
    for i, t in enumerate(trials.values()):
        t.trial_id, t.status = str(i), "RUNNING"
    tc = FakeController(list(trials.values()))

    def report(c, f, epoch, value=None):
        value = curve(c, f, epoch) if value is None else value
        decision = s.on_trial_result(tc, trials[(c, f)], {"m": value, "epoch": epoch})
        if decision == TrialScheduler.PAUSE:
            trials[(c, f)].status = "PAUSED"
        return decision

    # below the first rung everybody runs on
    assert report("good", 1, 1) == TrialScheduler.CONTINUE
    # a fold at the rung before its siblings waits, paused
    assert report("good", 1, 2) == TrialScheduler.PAUSE
    assert report("good", 2, 2) == TrialScheduler.PAUSE
    assert s.choose_trial_to_run(tc) is None  # paused folds are not resumed before the decision
    assert report("good", 3, 2) == TrialScheduler.CONTINUE  # first at this rung: passes
    assert s.choose_trial_to_run(tc) is trials[("good", 1)]  # … and its siblings resume
    # "bad" is judged only with all three folds in, then stopped on all three together
    assert report("bad", 1, 2) == TrialScheduler.PAUSE
    assert report("bad", 2, 2) == TrialScheduler.PAUSE
    assert "bad" not in s.stopped
    assert report("bad", 3, 2) == TrialScheduler.STOP
    assert sorted(t.trial_id for t in tc.stopped) == sorted(
        trials[("bad", f)].trial_id for f in (1, 2))
    assert s.stopped == {"bad": 2}
    mean_good = sum(curve("good", f, 2) for f in (1, 2, 3)) / 3
    assert abs(s.record[2]["good"] - mean_good) < 1e-12  # the rung judged fold means


def test_one_bad_fold_does_not_sink_a_good_configuration():
    """Plain per-trial ASHA would cut "good" fold 1; the fold mean keeps the configuration."""
    s = FoldMeanASHA("m", folds=3, max_t=4, grace_period=1, reduction_factor=2)
    everyone = [trial(c, f) for c in ("mid", "good") for f in (1, 2, 3)]
    for i, t in enumerate(everyone):
        t.trial_id, t.status = str(i), "RUNNING"
    tc = FakeController(everyone)
    values = [0.6, 0.6, 0.6, 0.55, 0.9, 0.9]  # good's fold 1 is below mid, its mean well above
    for t, value in zip(everyone, values):
        s.on_trial_result(tc, t, {"m": value, "epoch": 1})
    assert "good" not in s.stopped and not tc.stopped


def test_through_ray_tune_with_a_fake_trainable(ray_session, tmp_path):
    import sys

    from ray import cloudpickle, tune

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

    def fake(config):
        import json
        import tempfile
        from pathlib import Path

        cid, fold = config["variant"]["config_id"], config["fold"]
        start = 1
        if tune.get_checkpoint():
            with tune.get_checkpoint().as_directory() as d:
                start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
        for epoch in range(start, 5):
            with tempfile.TemporaryDirectory() as d:
                (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
                tune.report({"miou_full": curve(cid, fold, epoch), "epoch": epoch},
                            checkpoint=tune.Checkpoint.from_directory(d))

    # one rung, at epoch 2 of 4: through Tune, folds paused there wait for their siblings and
    # resume or stop together (several rungs: the FakeController tests above)
    scheduler = FoldMeanASHA("miou_full", folds=3, max_t=4, grace_period=2, reduction_factor=2)
    grid = tune.Tuner(
        tune.with_resources(fake, {"cpu": 0.5}),
        param_space={"variant": tune.grid_search([{"config_id": c} for c in QUALITY]),
                     "fold": tune.grid_search([1, 2, 3])},
        # the fake trials reuse their actors (9 rather than 20 core-s of worker start-ups); a
        # paused fold still resumes from its checkpoint
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(verbose=0, storage_path=str(tmp_path)),
    ).fit()
    epochs = {}
    for r in grid:
        assert r.error is None
        epochs.setdefault(r.config["variant"]["config_id"], []).append(r.metrics["epoch"])
    assert epochs["good"] == [4, 4, 4]  # the best configuration always trains to the end
    # every configuration stops on all of its folds at the same rung, or none
    for config_id, runs in epochs.items():
        assert len(set(runs)) == 1, (config_id, runs)
    # Trials start in grid order, so "good" completes the first rung before the last fold of
    # "bad" starts; "bad" is worse on every fold and is cut there, on all three folds.
    assert epochs["bad"] == [2, 2, 2]



def fleet(configs, folds=(1, 2)):
    trials = {(c, f): trial(c, f) for c in configs for f in folds}
    for i, t in enumerate(trials.values()):
        t.trial_id, t.status = f"id{i}", "RUNNING"
    return trials, FakeController(list(trials.values()))


def decide(s, tc, trials, config_id, epoch, values):
    decisions = []
    for fold, value in values.items():
        d = s.on_trial_result(tc, trials[(config_id, fold)], {"m": value, "epoch": epoch})
        if d == TrialScheduler.PAUSE:
            trials[(config_id, fold)].status = "PAUSED"
        decisions.append(d)
    return decisions


def test_a_retried_crash_keeps_early_stopping_a_final_failure_does_not():
    s = FoldMeanASHA("m", folds=2, max_t=4, grace_period=1, reduction_factor=2)
    trials, tc = fleet(["good", "bad", "lost"])
    # Tune's retry path: on_trial_error, then the trial is added back (on_trial_add)
    s.on_trial_error(tc, trials[("bad", 1)])
    s.on_trial_add(tc, trials[("bad", 1)])
    assert not s.broken("bad")
    decide(s, tc, trials, "good", 1, {1: 0.8, 2: 0.8})
    assert decide(s, tc, trials, "bad", 1, {1: 0.1, 2: 0.1})[-1] == TrialScheduler.STOP
    assert s.stopped == {"bad": 1}  # still judged, and cut, after its retried crash
    # a failure Tune will not retry: the configuration can never complete a rung
    s.on_trial_error(tc, trials[("lost", 1)])
    assert s.broken("lost")
    assert decide(s, tc, trials, "lost", 1, {2: 0.0}) == [TrialScheduler.CONTINUE]
    # --resume reruns the failed fold (Tune adds it back): its rung completes with the sibling's
    # result heard while the configuration was broken, instead of waiting for it forever
    s.on_trial_add(tc, trials[("lost", 1)])
    assert decide(s, tc, trials, "lost", 1, {1: 0.0}) == [TrialScheduler.STOP]
    assert s.stopped["lost"] == 1


def test_scheduler_state_survives_a_driver_restart():
    s = FoldMeanASHA("m", folds=2, max_t=4, grace_period=1, reduction_factor=2)
    trials, tc = fleet(["good", "mid", "bad"])
    decide(s, tc, trials, "good", 1, {1: 0.8, 2: 0.8})
    assert s.choose_trial_to_run(tc) is trials[("good", 1)]  # judged: its paused fold resumes
    trials[("good", 1)].status = "RUNNING"
    decide(s, tc, trials, "bad", 1, {1: 0.1, 2: 0.1})  # stopped (both folds)
    assert decide(s, tc, trials, "mid", 1, {1: 0.7}) == [TrialScheduler.PAUSE]  # waits
    saved = s.get_state()

    restarted = FoldMeanASHA("m", folds=2, max_t=4, grace_period=1, reduction_factor=2)
    restarted.set_state(saved)
    # Tune brings paused and unfinished trials back as PENDING, with their ids
    for key in [("mid", 1), ("bad", 1)]:
        trials[key].status = "PENDING"
    tc.stopped.clear()
    # Tune would start every PENDING trial: mid fold 1, still waiting for fold 2, is paused
    # again instead, and a stopped configuration's fold is stopped
    assert restarted.choose_trial_to_run(tc) is None
    assert trials[("mid", 1)].status == "PAUSED"
    assert tc.stopped == [trials[("bad", 1)]]
    assert decide(restarted, tc, trials, "mid", 1, {2: 0.7}) == [TrialScheduler.CONTINUE]
    assert restarted.choose_trial_to_run(tc) is trials[("mid", 1)]  # released once judged
    assert restarted.record[1] == s.record[1] | {"mid": pytest.approx(0.7)}


def test_a_rung_the_restored_scheduler_never_heard_is_said_again_by_the_resuming_fold(tmp_path):
    """The driver dies after both folds passed rung 1 (fold 2 already at epoch 3) but before
    Tune's snapshot held fold 2's rung result: restored, the scheduler keeps fold 1 waiting for
    it. Fold 2 resumes from its state past the rung and says its rungs again, from its records
    (or, for the epoch its state holds, from the state's metrics)."""
    from raycity.foldsession import REPLAYED, FoldSession
    from raycity.foldstates import FoldCheckpoints

    s = FoldMeanASHA("m", folds=2, max_t=8, grace_period=1, reduction_factor=3)  # rungs 1, 3
    trials, tc = fleet(["mid"])
    assert decide(s, tc, trials, "mid", 1, {1: 0.6}) == [TrialScheduler.PAUSE]
    restarted = FoldMeanASHA("m", folds=2, max_t=8, grace_period=1, reduction_factor=3)
    restarted.set_state(s.get_state())
    for t in trials.values():
        t.status = "PENDING"
    assert restarted.choose_trial_to_run(tc) is trials[("mid", 2)]  # fold 1 stays paused

    fold2 = FoldCheckpoints(str(tmp_path), labels={"config_id": "mid"})
    for epoch, value in ((1, 0.7), (2, 0.72)):
        fold2.record({"fold": 2, "epoch": epoch, "m": value})
    state = {"epoch": 3, "meta": {"metrics": {"fold": 2, "epoch": 3, "m": 0.75}}}  # no record
    replay = FoldSession(fold2, 5, {1, 3}).replay(state)
    assert [(r["epoch"], r["m"], r[REPLAYED]) for r in replay] == [(1, 0.7, True),
                                                                 (3, 0.75, True)]
    assert fold2.recorded(3) == {"fold": 2, "epoch": 3, "m": 0.75}  # never reported: now recorded
    assert "config_id" not in replay[0]
    trials[("mid", 2)].status = "RUNNING"
    decisions = [restarted.on_trial_result(tc, trials[("mid", 2)], r) for r in replay]
    assert decisions == [TrialScheduler.CONTINUE, TrialScheduler.PAUSE]  # rung 1 judged; waits at 3
    assert restarted.record[1] == {"mid": pytest.approx(0.65)}
    assert restarted.choose_trial_to_run(tc) is trials[("mid", 1)]  # released at last
    assert FoldSession(fold2, 5, {5}).replay(state) == []  # a rung not yet reached is not said
