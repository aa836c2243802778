import pytest

from raycity.folds import FoldsError, load_folds, make_folds, save_folds

KEYS = [f"train/{city}/{city}_{i:06d}_000019" for city in ("aachen", "bonn", "jena", "ulm")
        for i in range(5 + len(city))]
CITIES = [k.split("/")[1] for k in KEYS]


def test_deterministic_disjoint_covering():
    a = make_folds(KEYS, k=3, seed=7)
    assert a == make_folds(list(reversed(KEYS)), k=3, seed=7)  # input order does not matter
    assert a != make_folds(KEYS, k=3, seed=8)
    vals = [set(f.val) for f in a]
    assert set().union(*vals) == set(KEYS)
    assert all(not (vals[i] & vals[j]) for i in range(3) for j in range(i + 1, 3))
    for f in a:
        assert set(f.train) == set(KEYS) - set(f.val)
    assert [f.fold for f in a] == [1, 2, 3]
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_group_by_city_keeps_cities_whole():
    folds = make_folds(KEYS, k=3, seed=0, groups=CITIES)
    city_of = dict(zip(KEYS, CITIES))
    for f in folds:
        assert not ({city_of[k] for k in f.val} & {city_of[k] for k in f.train})
    assert set().union(*(set(f.val) for f in folds)) == set(KEYS)
    # every fold validates on something, and greedy dealing keeps the folds within one city's
    # size of each other (not every city in one fold: a split of [37, 0, 0])
    sizes = [len(f.val) for f in folds]
    largest = max(CITIES.count(c) for c in set(CITIES))
    assert min(sizes) > 0 and max(sizes) - min(sizes) <= largest, sizes
    with pytest.raises(FoldsError, match="cities cannot fill"):
        make_folds(KEYS, k=5, groups=CITIES)


def test_too_few_samples():
    with pytest.raises(FoldsError, match="cannot cut 2 samples into 3 folds"):
        make_folds(KEYS[:2], k=3)


def test_manifest_round_trip(tmp_path):
    folds = make_folds(KEYS, k=3, seed=1)
    save_folds(tmp_path / "folds.json", folds, {"seed": 1})
    loaded, meta = load_folds(tmp_path / "folds.json")
    assert loaded == folds and meta == {"seed": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FoldsError, match="bad.json"):
        load_folds(tmp_path / "bad.json")


def test_repeated_folds_are_independent_splits_numbered_through(tmp_path):
    """--repeats R: R K-fold splits, each a partition of the data with its own seed (the first
    is the plain split), cities kept whole in every one; folds numbered 1 … R·K."""
    from raycity.folds import make_repeated_folds

    assert make_repeated_folds(KEYS, k=3, seed=7) == make_folds(KEYS, k=3, seed=7)
    folds = make_repeated_folds(KEYS, k=3, seed=7, repeats=3)
    assert [(f.repeat, f.fold) for f in folds] == [
        (r, (r - 1) * 3 + i) for r in (1, 2, 3) for i in (1, 2, 3)]
    splits = []
    for r in (1, 2, 3):
        vals = [set(f.val) for f in folds if f.repeat == r]
        assert set().union(*vals) == set(KEYS) and sum(map(len, vals)) == len(KEYS)
        splits.append(sorted(tuple(sorted(v)) for v in vals))
    assert len({tuple(s) for s in splits}) == 3  # three different splits
    city_of = dict(zip(KEYS, CITIES))
    for f in make_repeated_folds(KEYS, k=2, seed=0, groups=CITIES, repeats=2):
        assert not ({city_of[k] for k in f.val} & {city_of[k] for k in f.train})
    save_folds(tmp_path / "folds.json", folds, {"k": 3, "repeats": 3})
    assert load_folds(tmp_path / "folds.json")[0] == folds
    # a folds.json written before repeats: every fold in repeat 1
    (tmp_path / "old.json").write_text('{"k": 2, "folds": [{"fold": 1, "train": ["a"], '
                                       '"val": ["b"]}, {"fold": 2, "train": ["b"], "val": ["a"]}]}')
    assert [f.repeat for f in load_folds(tmp_path / "old.json")[0]] == [1, 1]
