"""Forms are two-way views of configs: value round trips, invalid values marked, templates applied."""

from __future__ import annotations

import dataclasses

import pytest

from helpers.config import ConfigError, build_config, from_dict
from helpers.templates import list_templates
from helpers.ui.forms import config_form, templates_for
from tests.test_config import Demo, Optim


def test_form_round_trip():
    cfg = Demo(learning_rate=2e-6, epochs=4, optimizer="adamw", seed=7, tags=["x", "y"], optim=Optim(0.5))
    form = config_form(Demo)
    form.value = cfg
    assert form.value == cfg
    assert config_form(cfg).value == cfg


def test_invalid_values_marked_next_to_field():
    form = config_form(Demo)
    form.rows["learning_rate"].input.value = -1.0
    form.rows["seed"].input.value = "seven"
    with pytest.raises(ConfigError) as err:
        _ = form.value
    assert set(err.value.problems) == {"learning_rate", "seed"}
    assert "between" in form.rows["learning_rate"].message.value
    assert "expected int" in form.rows["seed"].message.value
    assert "2 problem" in form.status.value
    form.rows["learning_rate"].input.value = 1e-5
    form.rows["seed"].input.value = ""
    assert form.value.seed is None and form.rows["seed"].message.value == ""


def test_value_is_parsed_once_and_checked_by_config_validate(monkeypatch):
    import helpers.ui.forms as forms_mod
    from helpers.config import validate

    form = config_form(Demo)
    form.rows["optimizer"].input.value = "adamw"
    form.rows["epochs"].input.value = 2000  # valid alone; the class's own check refuses it with adamw
    parses = []
    monkeypatch.setattr(forms_mod, "from_dict", lambda *a, **k: parses.append(a) or from_dict(*a, **k))
    with pytest.raises(ConfigError) as err:
        _ = form.value
    assert len(parses) == 1, "the widgets' data was parsed more than once"
    assert err.value.problems == validate(Demo(optimizer="adamw", epochs=2000)) == {"epochs": "too many for adamw"}
    assert "too many for adamw" in form.rows["epochs"].message.value
    form.rows["epochs"].input.value = 20
    parses.clear()
    cfg = form.value
    assert len(parses) == 1 and (cfg.optimizer, cfg.epochs) == ("adamw", 20) and validate(cfg) == {}


def test_secret_uses_password_widget_and_groups_collapse():
    import ipywidgets as w

    form = config_form(Demo)
    assert isinstance(form.rows["token"].input, w.Password)
    assert isinstance(form.rows["optimizer"].input, w.Dropdown)
    accordions = [c for c in form.widget.children if isinstance(c, w.Accordion)]
    assert accordions and all(a.selected_index is None for a in accordions)


def test_save_and_load_buttons(tmp_path):
    form = config_form(Demo)
    form.rows["epochs"].input.value = 9
    form.path_box.value = str(tmp_path / "c.toml")
    form._on_save()
    other = config_form(Demo)
    other.path_box.value = str(tmp_path / "c.toml")
    other._on_load()
    assert other.value.epochs == 9


def test_callback_errors_are_shown_not_lost(tmp_path):
    form = config_form(Demo)
    form.path_box.value = str(tmp_path / "missing.toml")
    form._guard(form._on_load)  # a user's mistake: the message next to the form, no traceback
    assert "not found" in form.status.value and not form.output.outputs


def test_callback_bugs_keep_their_traceback():
    form = config_form(Demo)

    def broken():
        raise RuntimeError("a bug in a callback")

    with pytest.raises(RuntimeError):
        form._guard(broken)
    assert "a bug in a callback" in form.status.value


@pytest.mark.parametrize("name", list_templates())
def test_every_template_round_trips_through_a_form(name):
    matching = [cls for cls in _config_classes() if name in templates_for(cls)]
    assert matching, f"template {name} loads into no config class"
    for cls in matching:
        cfg = build_config(cls, name)
        form = config_form(cls, template=name, templates=templates_for(cls))
        assert from_dict(cls, form.raw()) == cfg  # every template value reaches the widgets and back
        # templates leave the user's own choices (dataset, base model) empty: only those may be flagged
        assert all(key.startswith(("data.dataset", "model.base_model")) for key in form.problems())
        filled = dataclasses.replace(cfg, **_user_choices(cfg))
        form.value = filled
        assert form.value == filled


def _user_choices(cfg):
    out = {}
    if hasattr(cfg, "model") and hasattr(cfg.model, "base_model") and not cfg.model.base_model:
        out["model"] = dataclasses.replace(cfg.model, base_model="base.safetensors")
    if hasattr(cfg, "data") and hasattr(cfg.data, "dataset") and not cfg.data.dataset:
        out["data"] = dataclasses.replace(cfg.data, dataset="my-dataset")
    return out


def _config_classes():
    import importlib

    found = []
    for mod, attr in [("helpers.training", "TrainConfig"), ("helpers.training.config", "TrainConfig")]:
        try:
            found.append(getattr(importlib.import_module(mod), attr))
        except (ImportError, AttributeError):
            continue
    return list(dict.fromkeys(found))


def test_stage_tables_are_edited_one_inline_table_per_line():
    from helpers.config import build_config
    from helpers.training.config import TrainConfig

    cfg = build_config(TrainConfig, overrides={
        "model": {"base_model": "m"}, "data": {"dataset": "d"}, "optimizer": {"train_text_encoder": True},
        "epochs": 16, "stages": [{"epochs": 10, "resolution": 768},
                                 {"epochs": 6, "resolution": 1024, "learning_rate_te1": 1e-7}]})
    form = config_form(cfg)
    row = form.rows["stages"]
    assert row.input.value.splitlines() == ["{epochs = 10, resolution = 768}",
                                            "{epochs = 6, resolution = 1024, learning_rate_te1 = 1e-07}"]
    assert form.value.stages == cfg.stages
    row.input.value = "{epochs = 16, resolution = 512}"
    assert [(s.epochs, s.resolution) for s in form.value.stages] == [(16, 512)]
    row.input.value = "{epochs = 16, resolutoin = 512}"
    assert "stages[0].resolutoin" in form.problems()
    with pytest.raises(ConfigError):
        _ = form.value
    assert "resolutoin" in row.message.value  # shown next to the stages field


def test_lists_of_numbers_are_typed_one_per_line():
    from helpers.evaluation import EvalSettings

    form = config_form(EvalSettings(strengths=[0.0, 0.5, 1.0]))
    assert form.value.strengths == [0.0, 0.5, 1.0] and form.rows["strengths"].input.value == "0.0\n0.5\n1.0"
    form.rows["strengths"].input.value = "0\n0.8\nstrong"
    with pytest.raises(ConfigError) as err:
        _ = form.value
    assert set(err.value.problems) == {"strengths[2]"}
