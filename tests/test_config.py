"""Config machinery: types, ranges, unknown keys, layering, TOML round trip, migration, atomic save."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar, Literal, Optional

import pytest

from helpers.config import (
    ConfigError,
    build_config,
    dumps_toml,
    from_dict,
    load_config,
    option,
    save_config,
    to_dict,
    validate,
)


@dataclasses.dataclass
class Optim:
    beta1: float = option(0.9, help="first moment decay", min=0.0, max=1.0, group="advanced")


@dataclasses.dataclass
class Demo:
    format_version: ClassVar[int] = 2
    learning_rate: float = option(1e-6, help="LR", min=0.0, max=1.0)
    epochs: int = option(100, help="epochs", min=1)
    optimizer: Literal["adamw", "adamw8bit"] = option("adamw8bit", help="optimizer")
    seed: Optional[int] = option(None, help="seed")
    data: Path = option(Path("data"), help="dataset folder", kind="path")
    tags: list[str] = option(["a"], help="tags")
    token: str = option("", help="secret", kind="secret")
    optim: Optim = option(factory=Optim, help="optimizer settings")

    @classmethod
    def migrate(cls, data, version):
        if version == 1 and "lr" in data:  # v1 called it "lr"
            data = dict(data)
            data["learning_rate"] = data.pop("lr")
        return data

    def check(self):
        return {"epochs": "too many for adamw"} if self.optimizer == "adamw" and self.epochs > 1000 else {}


def test_defaults_and_types():
    cfg = from_dict(Demo, {"learning_rate": 1, "epochs": 3.0, "data": "x", "optim": {"beta1": 0.5}})
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.epochs == 3 and isinstance(cfg.epochs, int)
    assert cfg.data == Path("x") and cfg.optim.beta1 == 0.5


@pytest.mark.parametrize("data, key, words", [
    ({"learning_rte": 1e-5}, "learning_rte", "unknown key"),
    ({"epochs": "ten"}, "epochs", "expected int"),
    ({"epochs": 0}, "epochs", "must be >= 1"),
    ({"learning_rate": 2.0}, "learning_rate", "between 0.0 and 1.0"),
    ({"optimizer": "lion"}, "optimizer", "one of 'adamw', 'adamw8bit'"),
    ({"optim": {"beta1": 3}}, "optim.beta1", "between"),
    ({"optim": {"gamma": 3}}, "optim.gamma", "unknown key"),
    ({"tags": "a,b"}, "tags", "expected list of str"),
    ({"epochs": True}, "epochs", "expected int"),
    ({"learning_rate": float("nan")}, "learning_rate", "finite"),
])
def test_errors_name_the_key(data, key, words):
    with pytest.raises(ConfigError) as err:
        from_dict(Demo, data)
    assert key in err.value.problems
    assert words in err.value.problems[key]
    assert key in str(err.value)


def test_unknown_key_suggests_close_name():
    with pytest.raises(ConfigError) as err:
        from_dict(Demo, {"learningrate": 1e-5})
    assert "did you mean 'learning_rate'" in err.value.problems["learningrate"]


def test_layering_defaults_template_overrides(tmp_path):
    tpl = tmp_path / "t.toml"
    tpl.write_text("format_version = 2\nepochs = 5 # reason\noptimizer = 'adamw'\n")
    cfg = build_config(Demo, tpl, overrides={"epochs": 7})
    assert (cfg.epochs, cfg.optimizer, cfg.learning_rate) == (7, "adamw", 1e-6)


def test_toml_round_trip_and_secret_not_saved(tmp_path):
    cfg = Demo(learning_rate=3e-6, seed=4, tags=["x", 'q"uote'], token="hf_secret123456", optim=Optim(0.8))
    path = save_config(cfg, tmp_path / "run" / "config.toml")
    text = path.read_text()
    assert "hf_secret" not in text and "format_version = 2" in text
    back = load_config(Demo, path)
    assert back == dataclasses.replace(cfg, token="")
    assert not list(path.parent.glob("*.tmp"))


def test_migration_from_older_format(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text("format_version = 1\nlr = 2e-6\n")
    assert load_config(Demo, path).learning_rate == 2e-6
    path.write_text("format_version = 3\n")
    with pytest.raises(ConfigError, match="update tunebook"):
        load_config(Demo, path)


def test_bad_toml_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("epochs = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(Demo, path)


def test_validate_and_check():
    assert validate(Demo()) == {}
    assert validate(Demo(epochs=0)) == {"epochs": "must be >= 1, got 0"}
    assert "epochs" in validate(Demo(optimizer="adamw", epochs=2000))


def test_only_changed_and_dumps():
    assert to_dict(Demo(epochs=3), only_changed=True) == {"epochs": 3}
    assert dumps_toml({"a": 1, "b": {"c": [1, 2]}}) == "a = 1\n\n[b]\nc = [1, 2]\n"
