"""A fold's checkpoints: the best epoch's weights kept exactly, at most two complete states on
disk (and one being written), each made durable before the older ones go, writes spaced by what
they cost, and a resume from whatever a crash left behind."""

from __future__ import annotations

import copy

import pytest
import torch

import raycity.durable as durable
import raycity.foldstates as foldstates
from raycity.foldstates import FoldCheckpoints


class Clock:
    """Stands in for time.perf_counter: the test decides when each epoch ends."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(foldstates.time, "perf_counter", clock)
    return clock


def trainer(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(8, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)

    def step():
        model(torch.randn(16, 8)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()

    def state(epoch):
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "meta": meta(epoch)}

    return model, step, state


def meta(epoch):
    return {"arch": "UNetResNet50", "num_classes": 19, "epoch": epoch}


def files(ck: FoldCheckpoints, prefix: str) -> list[str]:
    return sorted(p.name for p in __import__("pathlib").Path(ck.directory).iterdir()
                  if p.name.startswith(prefix))


def test_best_weights_are_the_best_epochs_exactly(tmp_path, clock):
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    scores = [0.1, 0.3, 0.2, 0.5, 0.4]
    kept = {}
    for epoch, score in enumerate(scores, 1):
        step()
        kept[epoch] = copy.deepcopy(model.state_dict())
        clock.now += 10
        ck.end_of_epoch(epoch, score, model.state_dict, lambda e=epoch: state(e), meta(epoch),
                        last=epoch == len(scores))
    ck.close()
    best = torch.load(ck.best_file(), weights_only=True)
    assert best["meta"]["epoch"] == 4 and ck.best_epoch == 4
    for name, tensor in kept[4].items():  # epoch 4's weights, not the last or another epoch's
        assert torch.equal(best["model"][name], tensor), name
    assert not torch.equal(best["model"]["weight"], kept[5]["weight"])


def test_at_most_three_full_states_and_writes_spaced_by_their_cost(tmp_path, clock, monkeypatch):
    """The first state is written after epoch 1; the next only once 1/budget × the measured
    write time has passed; a write never queues behind another; at no moment are more than two
    full states (one complete, one being written) in the folder."""
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path), budget=0.05)
    seen = []
    write = ck._write

    def slow_write(name, obj):
        if name.startswith("state-"):
            seen.append(files(ck, "state-") + files(ck, ".state-"))
            clock.now += 2.0  # this write takes 2 s: states at least 40 s apart
        return write(name, obj)

    monkeypatch.setattr(ck, "_write", slow_write)
    at_prune = []  # the moment with the most states: the new one complete, the old not yet gone
    prune = ck._prune

    def watched_prune(pattern, keep):
        if pattern.pattern.startswith("^state-"):
            at_prune.append(files(ck, "state-") + files(ck, ".state-"))
        return prune(pattern, keep)

    monkeypatch.setattr(ck, "_prune", watched_prune)
    written = []
    for epoch in range(1, 12):
        step()
        clock.now += 10  # 10-second epochs
        save = ck.end_of_epoch(epoch, 0.0, model.state_dict, lambda e=epoch: state(e),
                               meta(epoch), last=epoch == 11)
        ck._join()  # let each background write finish before the clock moves on
        written.append(save.saved)
        assert len(files(ck, "state-")) <= 2 and len(files(ck, ".state-")) == 0
    assert len(seen) == 3 and all(len(names) <= 2 for names in seen)
    # the moment after a rename: the new state and the two before it, of which one goes
    assert [len(names) for names in at_prune] == [1, 2, 3]
    # Epoch 1 always (t = 10 s; the 2-s write moves the clock to 12); then the first epoch end
    # ≥ 40 s after the last write began: epoch 5 (t = 52), epoch 9 (t = 94); never the last.
    completed = sorted({name for name in written if name})
    assert completed == ["state-000001.pt", "state-000005.pt", "state-000009.pt"]


def test_sync_epochs_are_on_disk_before_the_epoch_is_reported(tmp_path, clock):
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    for epoch in (1, 2, 3):
        step()
        clock.now += 10
        save = ck.end_of_epoch(epoch, 0.1 * epoch, model.state_dict, lambda e=epoch: state(e),
                               meta(epoch), sync=epoch == 3)
    assert save.saved == "state-000003.pt"
    states = files(ck, "state-")  # and its predecessor (epoch 1 or 2: the writer's pace)
    assert len(states) == 2 and states[-1] == "state-000003.pt"
    # written with it (the trial may be stopped next), and the one the predecessor refers to
    assert files(ck, "best-") == [states[0].replace("state", "best"), "best-000003.pt"]


def test_resume_takes_the_newest_state_and_cleans_what_a_crash_left(tmp_path, clock):
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    for epoch in (1, 2):
        step()
        clock.now += 10
        ck.end_of_epoch(epoch, 0.1 * epoch, model.state_dict, lambda e=epoch: state(e),
                        meta(epoch), sync=True)
    after_two = copy.deepcopy(model.state_dict())
    for epoch in (1, 2, 3):
        ck.record({"epoch": epoch, "miou_low": 0.1 * epoch})
    # a crash later: a half-written state, and best weights of an epoch after the last state
    (tmp_path / ".state-000003.pt.tmp").write_bytes(b"half")
    torch.save({"model": model.state_dict(), "meta": meta(3)}, tmp_path / "best-000003.pt")
    resumed = FoldCheckpoints(str(tmp_path))
    state2 = resumed.resume()
    assert state2["epoch"] == 2 and torch.equal(state2["model"]["weight"], after_two["weight"])
    assert (resumed.best_epoch, resumed.best_score) == (2, pytest.approx(0.2))
    # epoch 3 will be trained again: its best weights and its record are gone
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-000001.pt", "best-000002.pt", "epoch-000001.json", "epoch-000002.json",
        "state-000001.pt", "state-000002.pt"]
    assert resumed.notice is None
    assert FoldCheckpoints(str(tmp_path / "empty")).resume() is None  # nothing yet: start over


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_a_damaged_newest_state_falls_back_to_the_previous_one(tmp_path, clock, damage):
    """Cut short by a power loss (or emptied): the fold resumes from the state before it, says
    which file was damaged and from which epoch it resumes, and forgets the epochs after it."""
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    for epoch in (1, 2):
        step()
        ck.end_of_epoch(epoch, 0.1 * epoch, model.state_dict, lambda e=epoch: state(e),
                        meta(epoch), sync=True)
        ck.record({"epoch": epoch, "miou_low": 0.1 * epoch})
        if epoch == 1:
            after_one = copy.deepcopy(model.state_dict())
    newest = tmp_path / "state-000002.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2] if damage == "truncate"
                       else b"")
    resumed = FoldCheckpoints(str(tmp_path))
    got = resumed.resume()
    assert got["epoch"] == 1 and torch.equal(got["model"]["weight"], after_one["weight"])
    assert (resumed.best_epoch, resumed.best_score) == (1, pytest.approx(0.1))
    assert "state-000002.pt" in resumed.notice and "resumed from epoch 1" in resumed.notice
    # the cause, in words, not the repr of the stream it was read from
    assert "NativeFile" not in resumed.notice
    assert ("zip archive" if damage == "truncate" else "(0 bytes") in resumed.notice
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best-000001.pt", "epoch-000001.json", "state-000001.pt"]


def test_with_no_state_that_loads_the_fold_starts_over_and_says_so(tmp_path, clock):
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    step()
    ck.end_of_epoch(1, 0.5, model.state_dict, lambda: state(1), meta(1), sync=True)
    ck.record({"epoch": 1, "miou_low": 0.5})
    (tmp_path / "state-000001.pt").write_bytes(b"cut short by a power loss")
    resumed = FoldCheckpoints(str(tmp_path))
    assert resumed.resume() is None and resumed.best_epoch == 0
    assert "state-000001.pt" in resumed.notice and "restarts from epoch 1" in resumed.notice
    assert list(tmp_path.iterdir()) == []  # nothing of the lost attempt is trusted


def test_a_state_is_durable_before_its_name_appears_and_before_older_ones_go(tmp_path, clock,
                                                                             monkeypatch):
    events = []
    real_fsync, real_replace = durable.os.fsync, durable.os.replace

    def fsync(fd):
        import os
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("rename", dst.rsplit("/", 1)[-1]))
        return real_replace(src, dst)

    monkeypatch.setattr(durable.os, "fsync", fsync)
    monkeypatch.setattr(durable.os, "replace", replace)
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    delete = ck._delete
    monkeypatch.setattr(ck, "_delete", lambda name: (events.append(("delete", name)),
                                                     delete(name)))
    for epoch in (1, 2, 3):
        step()
        ck.end_of_epoch(epoch, 0.0, model.state_dict, lambda e=epoch: state(e), meta(epoch),
                        sync=True)
    for epoch in (1, 3):
        i = events.index(("rename", f"state-00000{epoch}.pt"))
        # the file's bytes, then its name, then the folder that holds the name
        assert events[i - 1:i + 2] == [("fsync", f".state-00000{epoch}.pt.tmp"),
                                       ("rename", f"state-00000{epoch}.pt"),
                                       ("fsync", tmp_path.name)]
    # the oldest goes only once the third is durable
    assert events.index(("delete", "state-000001.pt")) == i + 2
    assert files(ck, "state-") == ["state-000002.pt", "state-000003.pt"]


@pytest.mark.parametrize("keep", [False, True])
def test_a_finished_fold_keeps_its_best_weights_and_its_states_only_when_asked(tmp_path, clock,
                                                                               keep):
    """A finished fold resumes from done.json; its 1.8-GB states would only fill a sweep's disk."""
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path), keep_states=keep)
    for epoch in (1, 2):
        step()
        clock.now += 10
        ck.end_of_epoch(epoch, 0.1 * epoch, model.state_dict, lambda e=epoch: state(e),
                        meta(epoch), last=epoch == 2)
    ck.close()
    assert files(ck, "state-")  # until the fold has finished, it can resume
    ck.mark_done({"epoch": 2})
    assert bool(files(ck, "state-")) is keep
    assert files(ck, "best-")[-1] == "best-000002.pt" and ck.done() == {"epoch": 2}
    assert len(files(ck, "best-")) == (2 if keep else 1)  # the state's best stays with it


def test_a_fold_that_will_never_resume_drops_its_states_and_keeps_its_best(tmp_path, clock):
    model, step, state = trainer()
    ck = FoldCheckpoints(str(tmp_path))
    for epoch in (1, 2, 3):
        step()
        ck.end_of_epoch(epoch, 0.1 * epoch, model.state_dict, lambda e=epoch: state(e),
                        meta(epoch), sync=True)
    assert files(ck, "state-") and len(files(ck, "best-")) >= 2
    FoldCheckpoints(str(tmp_path)).drop_states()  # e.g. stopped at an early-stopping rung
    assert files(ck, "state-") == [] and files(ck, "best-") == ["best-000003.pt"]
