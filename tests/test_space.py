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
    with pytest.raises(SpaceError, match=f"{bad}: unreadable YAML"):
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
    text = (SPACES_DIR / "README.md").read_text()
    for word in ("grid", "choice", "uniform", "loguniform", "randint", "quniform",
                 "num_samples", "metric", "scheduler", *TUNABLE):
        assert word in text, word
    assert yaml.safe_load((SPACES_DIR / "lr.yaml").read_text())["params"]
