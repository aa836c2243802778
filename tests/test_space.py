import numpy as np
import pytest
import yaml

from raycity.config import preset
from raycity.tune.space import (
    SPACES_DIR,
    TUNABLE,
    SpaceError,
    check_against,
    load_space,
    parse_space,
    sample_configurations,
)


@pytest.mark.parametrize("name", ["lr.yaml", "dropout.yaml", "lr_dropout.yaml"])
def test_shipped_spaces_parse(name):
    space = load_space(name)
    configs = sample_configurations(space)
    assert configs and all(set(c) == set(space.params) for c in configs)
    check_against(preset("smoke"), configs, space.path)


def test_grid_times_samples_and_reproducible():
    raw = {"params": {"lr": {"loguniform": [1e-5, 1e-3]}, "dropout": {"grid": [0.0, 0.1, 0.2]},
                      "batch_size": {"choice": [2, 4]}}, "num_samples": 2, "seed": 5}
    space = parse_space(raw)
    configs = sample_configurations(space)
    assert len(configs) == 6
    assert sorted(c["dropout"] for c in configs) == [0.0, 0.0, 0.1, 0.1, 0.2, 0.2]
    assert all(1e-5 <= c["lr"] <= 1e-3 and c["batch_size"] in (2, 4) for c in configs)
    assert len({c["lr"] for c in configs}) == 6  # every configuration has its own draw
    assert configs == sample_configurations(parse_space(raw))
    assert all(isinstance(c["batch_size"], int) and isinstance(c["lr"], float) for c in configs)


@pytest.mark.parametrize("params, fragment", [
    ({"lr": {"gaussian": [0, 1]}}, "params.lr.gaussian: unknown sampler"),
    ({"momentum": {"uniform": [0, 1]}}, "params.momentum: unknown field; tunable fields"),
    ({"lr": {"uniform": [0.1, 0.01]}}, "params.lr.uniform: low (0.1) must be below high (0.01)"),
    ({"lr": {"loguniform": [0, 0.1]}}, "params.lr.loguniform: bounds must be > 0"),
    ({"dropout": {"choice": []}}, "params.dropout.choice: expected a non-empty list"),
    ({"lr": {"uniform": ["a", 1]}}, "params.lr.uniform: expected a number, got 'a'"),
    ({"batch_size": {"grid": [2, 2.5]}}, "params.batch_size.grid: expected an integer"),
    ({"lr": {"uniform": [1]}}, "params.lr.uniform: expected [low, high]"),
    ({"batch_size": {"uniform": [1, 4]}}, "batch_size is an integer"),
])
def test_bad_spaces_name_file_and_key(params, fragment):
    with pytest.raises(SpaceError) as err:
        parse_space({"params": params}, "spaces/bad.yaml")
    assert str(err.value).startswith("spaces/bad.yaml: ")
    assert fragment in str(err.value)


def test_unknown_field_lists_the_allowed_ones():
    with pytest.raises(SpaceError) as err:
        parse_space({"params": {"momentum": {"uniform": [0, 1]}}}, "x.yaml")
    for name in TUNABLE:
        assert name in str(err.value)


def test_bad_top_level_and_scheduler():
    with pytest.raises(SpaceError, match="num_samples"):
        parse_space({"params": {"lr": {"grid": [1e-4]}}, "num_samples": 0})
    with pytest.raises(SpaceError, match="metric"):
        parse_space({"params": {"lr": {"grid": [1e-4]}}, "metric": "accuracy"})
    with pytest.raises(SpaceError, match="scheduler"):
        parse_space({"params": {"lr": {"grid": [1e-4]}}, "scheduler": {"hyperband": {}}})
    with pytest.raises(SpaceError, match="unknown key"):
        parse_space({"params": {"lr": {"grid": [1e-4]}}, "samples": 3})
    with pytest.raises(SpaceError, match="params"):
        parse_space({"num_samples": 3})


def test_unreadable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("params: {lr: [unclosed")
    with pytest.raises(SpaceError, match=f"{bad}: not usable YAML"):
        load_space(str(bad))
    with pytest.raises(SpaceError) as err:
        load_space("nope.yaml")
    message = str(err.value)
    assert "nope.yaml" in message and "lr.yaml" in message and str(SPACES_DIR) in message


def test_sampled_values_are_checked_against_the_config():
    space = parse_space({"params": {"dropout": {"grid": [0.5, 1.5]}}}, "d.yaml")
    with pytest.raises(SpaceError, match="d.yaml.*dropout=1.5"):
        check_against(preset("smoke"), sample_configurations(space), space.path)


def test_space_readme_documents_the_vocabulary():
    """Each word as a word: `uniform` is not found inside `loguniform`."""
    text = (SPACES_DIR / "README.md").read_text()
    for word in ("grid", "choice", "uniform", "loguniform", "randint", "quniform",
                 "num_samples", "metric", "scheduler", "search", "seed", *TUNABLE):
        assert f"`{word}`" in text or f"\n{word}:" in text, word
    assert yaml.safe_load((SPACES_DIR / "lr.yaml").read_text())["params"]


def test_search_key_and_default_method():
    assert parse_space({"params": {"dropout": {"grid": [0.0, 0.1]}}}).method == "grid"
    assert parse_space({"params": {"lr": {"loguniform": [1e-5, 1e-3]}}}).method == "random"
    assert parse_space({"params": {"lr": {"grid": [1e-4]}}, "search": "optuna"}).method == "optuna"
    with pytest.raises(SpaceError, match="search: expected one of"):
        parse_space({"params": {"lr": {"grid": [1e-4]}}, "search": "bayes"})


def test_grid_cuts_drawn_domains_within_the_budget():
    from raycity.tune.space import grid_configurations

    space = parse_space({"params": {"lr": {"loguniform": [1e-5, 1e-3]},
                                    "dropout": {"uniform": [0.0, 0.4]},
                                    "batch_size": {"grid": [2, 4]}}})
    configs = grid_configurations(space, 24)
    lrs = sorted({c["lr"] for c in configs})
    dropouts = sorted({c["dropout"] for c in configs})
    assert (len(lrs), len(dropouts)) == (6, 4) and len(configs) == 24 * 2  # × batch_size grid
    assert dropouts == pytest.approx([0.05, 0.15, 0.25, 0.35])  # cell centres, never the bounds
    ratios = np.diff(np.log10(lrs))
    assert np.allclose(ratios, ratios[0])  # evenly spaced in log space (a loguniform domain)
    assert lrs[0] > 1e-5 and lrs[-1] < 1e-3
    ints = grid_configurations(parse_space({"params": {"plateau_patience": {"randint": [1, 5]}}}),
                               10)
    assert sorted(c["plateau_patience"] for c in ints) == [1, 2, 3, 4]


def test_optuna_sees_listed_values_as_choices_and_limits_are_checked():
    from ray.tune.search.sample import Categorical, Float

    from raycity.tune.space import optuna_space

    space = parse_space({"params": {"lr": {"loguniform": [1e-5, 1e-3]},
                                    "dropout": {"grid": [0.0, 0.2]}}})
    converted = optuna_space(space)
    assert isinstance(converted["lr"], Float) and isinstance(converted["dropout"], Categorical)
    assert converted["dropout"].categories == [0.0, 0.2]
    assert space.extremes() == [{"lr": 1e-5}, {"lr": 1e-3}, {"dropout": 0.0}, {"dropout": 0.2}]
    bad = parse_space({"params": {"dropout": {"uniform": [0.0, 1.5]}}}, "d.yaml")
    with pytest.raises(SpaceError, match="dropout=1.5"):
        check_against(preset("smoke"), bad.extremes(), bad.path)


def test_a_resumed_sweep_refuses_to_change_its_search(tmp_path, capsys):
    from raycity import sweep

    args = ["--resume", str(tmp_path / "run"), "--search", "grid", "--max-concurrent", "2"]
    assert sweep.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--search, --max-concurrent cannot change" in err and "drop them" in err
