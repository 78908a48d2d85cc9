"""Widget forms that are two-way views of a config dataclass.

``form = config_form(TrainConfig, template="sdxl_finetune_a6000")`` builds one widget per field from its type
and metadata (label, help, unit, range, group); ``form.value`` returns a validated config (and shows each
problem next to its field), ``form.value = cfg`` sets the widgets. A template dropdown applies a preset;
save/load buttons write and read TOML. Every callback runs under the form's ``Output`` capture, so no
exception vanishes in the browser. When widgets cannot render, edit the config in a plain cell instead:
``cfg = dataclasses.replace(form.value, learning_rate=1e-6)`` or ``cfg = build_config(TrainConfig, overrides={...})``.
"""

from __future__ import annotations

import dataclasses
import enum
import html
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import ipywidgets as w

from helpers import templates as templates_mod
from helpers.config import (
    ConfigError,
    build_config,
    config_fields,
    field_meta,
    from_dict,
    load_config,
    save_config,
    to_dict,
    type_name,
    validate,
)
from helpers.ui.errors import error_html

_MISSING = object()


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _inline_toml(data: dict[str, Any]) -> str:
    from helpers.config import dumps_toml

    return "{" + ", ".join(dumps_toml({k: v}).strip() for k, v in data.items()) + "}"


def _inline_table(line: str) -> Any:
    """``{epochs = 10, resolution = 768}`` -> a dict; text that is not one is returned for from_dict to name."""
    import tomllib

    try:
        return tomllib.loads(f"item = {line}")["item"]
    except tomllib.TOMLDecodeError:
        return line


def _number(text: str, tp: type) -> Any:
    """A number typed in a list field (``0.5`` per line); the text as it is when it is none (``from_dict`` names
    the item and the expected type)."""
    try:
        return tp(text) if tp is float else int(text)
    except ValueError:
        return text


class FieldRow:
    """One field: label, input widget, unit, help and a message area. Converts widget <-> plain data."""

    def __init__(self, key: str, f: dataclasses.Field, tp: Any):
        self.key = key
        self.meta = field_meta(f)
        self.tp, self.optional = _unwrap_optional(tp)
        self.kind = self.meta["kind"] or ("path" if self.tp is Path else None)
        # a list of config tables ([[stages]]) is edited as one TOML inline table per line
        self._of_tables = get_origin(self.tp) is list and dataclasses.is_dataclass((get_args(self.tp) or (None,))[0])
        self.input = self._make_input()
        self.message = w.HTML("")
        label = self.meta["label"] + (f" ({self.meta['unit']})" if self.meta["unit"] else "")
        self.label = w.HTML(f"<b title='{html.escape(self.meta['help'], quote=True)}'>{html.escape(label)}</b>",
                            layout=w.Layout(width="230px"))
        help_html = w.HTML(f"<span style='color:#666;font-size:90%'>{html.escape(self.meta['help'])}</span>")
        self.box = w.VBox([w.HBox([self.label, self.input, self.message]), help_html],
                          layout=w.Layout(margin="0 0 6px 0"))
        if self.kind == "path":
            self.input.observe(lambda _change: self._check_path(), names="value")

    def _make_input(self) -> w.Widget:
        tp, meta = self.tp, self.meta
        layout = w.Layout(width="340px")
        if get_origin(tp) is Literal:
            return w.Dropdown(options=list(get_args(tp)), layout=layout)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return w.Dropdown(options=[(str(m.value), m.value) for m in tp], layout=layout)
        if tp is bool:
            return w.Checkbox(indent=False)
        if get_origin(tp) is list:
            hint = "one {key = value, ...} table per line" if self._of_tables else "one item per line"
            return w.Textarea(placeholder=hint, layout=w.Layout(width="340px", height="70px"))
        if tp in (int, float) and not self.optional:
            # Plain (unbounded) number boxes: a bounded widget would silently clamp; we report instead.
            kwargs = {"step": meta["step"]} if meta["step"] is not None else {}
            return (w.IntText if tp is int else w.FloatText)(layout=layout, **kwargs)
        if self.kind == "secret":
            return w.Password(layout=layout)
        if self.kind == "multiline":
            return w.Textarea(layout=w.Layout(width="340px", height="80px"))
        placeholder = "empty = default/none" if self.optional else ""
        return w.Text(placeholder=placeholder, layout=layout)

    def get(self) -> Any:
        """Plain data for ``from_dict`` (strings of number fields are parsed here, errors reported later)."""
        value = self.input.value
        tp = self.tp
        if get_origin(tp) is list:
            lines = [line.strip() for line in value.splitlines() if line.strip()]
            if self._of_tables:
                return [_inline_table(line) for line in lines]
            item = (get_args(tp) or (str,))[0]
            return [_number(line, item) for line in lines] if item in (int, float) else lines
        if isinstance(self.input, (w.Text, w.Textarea, w.Password)) and tp is not str and tp is not Path:
            text = value.strip()
            if not text:
                return None if self.optional else text
            try:
                return int(text) if tp is int else float(text) if tp is float else text
            except ValueError:
                return text  # from_dict names the field and the expected type
        if isinstance(value, str) and self.optional and not value.strip():
            return None
        return value

    def set(self, value: Any) -> None:
        if get_origin(self.tp) is list:
            items = [to_dict(v) if dataclasses.is_dataclass(v) else v for v in (value or [])]
            self.input.value = "\n".join(_inline_toml(v) if self._of_tables else str(v) for v in items)
        elif isinstance(value, enum.Enum):
            self.input.value = value.value
        elif isinstance(self.input, (w.Text, w.Textarea, w.Password)):
            self.input.value = "" if value is None else str(value)
        elif value is not None:
            self.input.value = value
        self.show(None)

    def show(self, problem: str | None) -> None:
        if problem:
            self.message.value = error_html(problem, icon=True)
        elif self.kind == "path":
            self._check_path()
        else:
            self.message.value = ""

    def _check_path(self) -> None:
        text = str(self.input.value).strip()
        if text and not Path(text).expanduser().exists():
            self.message.value = "<span style='color:#b60'>path does not exist (yet)</span>"
        else:
            self.message.value = ""


def _message_text(exc: BaseException) -> str:
    """An exception as the form shows it: its text, one line per problem (ConfigError lists one per line)."""
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return str(exc) or type(exc).__name__


class ConfigForm:
    """An ipywidgets form over one config dataclass. Display it; read ``value``; assign ``value``."""

    def __init__(self, cls: type, value: Any = None, template: str | None = None,
                 templates: list[str] | None = None, title: str = ""):
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config_form needs a config dataclass, got {cls!r}")
        self.cls = cls
        self.rows: dict[str, FieldRow] = {}
        self.output = w.Output()
        self.status = w.HTML("")
        sections = self._build_sections(cls, "")
        header: list[w.Widget] = []
        if title:
            header.append(w.HTML(f"<h3>{html.escape(title)}</h3>"))
        self.template_picker = None
        if templates:
            self.template_picker = w.Dropdown(options=["(defaults)"] + list(templates), description="template",
                                              layout=w.Layout(width="420px"))
            self.template_picker.observe(self._on_template, names="value")
            header.append(self.template_picker)
        self.path_box = w.Text(placeholder="path/to/config.toml", layout=w.Layout(width="340px"))
        save_btn, load_btn = w.Button(description="Save TOML", icon="save"), w.Button(description="Load TOML", icon="folder-open")
        save_btn.on_click(lambda _b: self._guard(self._on_save))
        load_btn.on_click(lambda _b: self._guard(self._on_load))
        footer = w.HBox([self.path_box, save_btn, load_btn])
        self.widget = w.VBox(header + sections + [footer, self.status, self.output])
        initial = value if value is not None else (build_config(cls, template) if template else cls())
        if template and self.template_picker is not None and template in templates:
            self.template_picker.value = template  # triggers apply, same values
        self.value = initial

    # -- building ---------------------------------------------------------------------------------------
    def _build_sections(self, cls: type, prefix: str) -> list[w.Widget]:
        groups: dict[str, list[w.Widget]] = {}
        nested: list[w.Widget] = []
        for f, tp in config_fields(cls):
            key = prefix + f.name
            if dataclasses.is_dataclass(tp):
                inner = self._build_sections(tp, key + ".")
                acc = w.Accordion(children=[w.VBox(inner)])
                acc.set_title(0, field_meta(f)["label"])
                acc.selected_index = None
                nested.append(acc)
                continue
            row = FieldRow(key, f, tp)
            self.rows[key] = row
            groups.setdefault(field_meta(f)["group"], []).append(row.box)
        out: list[w.Widget] = list(groups.pop("basic", []))
        for name, boxes in groups.items():
            acc = w.Accordion(children=[w.VBox(boxes)])
            acc.set_title(0, name)
            acc.selected_index = None  # collapsed: the basics stay on one screen
            out.append(acc)
        return out + nested

    # -- two-way value ----------------------------------------------------------------------------------
    def raw(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, row in self.rows.items():
            value = row.get()
            if value is None:
                continue
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return data

    def parse(self) -> tuple[Any, dict[str, str]]:
        """(config, {}) when the widgets hold a valid config, else (None or the config, {field: problem}).

        The widgets' data is parsed once (``from_dict``) and checked by ``helpers.config.validate``: the same
        rules as a TOML file or the command line, with no second copy here.
        """
        try:
            cfg = from_dict(self.cls, self.raw())
        except ConfigError as exc:
            return None, dict(exc.problems)
        return cfg, validate(cfg)

    def problems(self) -> dict[str, str]:
        return self.parse()[1]

    @property
    def value(self) -> Any:
        """The validated config; raises ``ConfigError`` (and marks the fields) when something is wrong."""
        cfg, problems = self.parse()
        for key, row in self.rows.items():
            # an item of a list of tables ("stages[1].resolution") is marked on the list's row
            inner = [f"{k[len(key):]}: {m}" for k, m in problems.items() if k.startswith(key + "[")]
            row.show(problems.get(key) or "; ".join(inner) or None)
        if problems:
            self.status.value = error_html(f"{len(problems)} problem(s): fix the marked field(s)")
            raise ConfigError(problems, self.cls.__name__)
        self.status.value = ""
        return cfg

    @value.setter
    def value(self, cfg: Any) -> None:
        if not isinstance(cfg, self.cls):
            raise TypeError(f"expected a {self.cls.__name__}, got {type(cfg).__name__}")
        flat: dict[str, Any] = {}

        def walk(obj: Any, prefix: str) -> None:
            for f, _tp in config_fields(type(obj)):
                v = getattr(obj, f.name)
                if dataclasses.is_dataclass(v):
                    walk(v, prefix + f.name + ".")
                else:
                    flat[prefix + f.name] = v

        walk(cfg, "")
        for key, row in self.rows.items():
            row.set(flat.get(key))
        self.status.value = ""

    # -- callbacks (each under the Output capture: nothing fails silently) --------------------------------
    def _guard(self, fn) -> None:
        with self.output:
            self.output.clear_output()
            try:
                fn()
            except (ValueError, OSError) as exc:  # the user's input (bad value, bad file): the message says the fix
                self.status.value = error_html(_message_text(exc))
            except Exception as exc:  # our bug: the message, and the traceback below it for the report
                self.status.value = error_html(_message_text(exc))
                raise

    def _on_template(self, change) -> None:
        def apply():
            name = change["new"]
            self.value = self.cls() if name == "(defaults)" else build_config(self.cls, name)
            self.status.value = f"template <b>{html.escape(name)}</b> applied"

        self._guard(apply)

    def _on_save(self) -> None:
        path = Path(self.path_box.value.strip() or "config.toml").expanduser()
        save_config(self.value, path)
        self.status.value = f"saved {html.escape(str(path))}"

    def _on_load(self) -> None:
        path = Path(self.path_box.value.strip()).expanduser()
        self.value = load_config(self.cls, path)
        self.status.value = f"loaded {html.escape(str(path))}"

    def save(self, path: str | Path) -> Path:
        return save_config(self.value, path)

    def load(self, path: str | Path) -> Any:
        self.value = load_config(self.cls, path)
        return self.value

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self.value)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def describe(self) -> str:
        """A plain-text list of the fields (for terminals and docs)."""
        lines = []
        for key, row in self.rows.items():
            lines.append(f"{key} ({type_name(row.tp)}): {row.meta['help']}")
        return "\n".join(lines)


def templates_for(cls: type) -> list[str]:
    """The shipped templates that apply to ``cls`` (those that load into it without errors)."""
    usable = []
    for name in templates_mod.list_templates():
        try:
            build_config(cls, name)
        except (ConfigError, OSError):
            continue
        usable.append(name)
    return usable


def config_form(cls_or_cfg: Any, value: Any = None, template: str | None = None,
                templates: list[str] | bool | None = None, title: str = "") -> ConfigForm:
    """A form for a config class (or an existing config object). ``templates=True`` lists all shipped ones."""
    from helpers.ui.colab import enable_colab_widgets

    enable_colab_widgets()  # Colab renders our widgets only with its custom widget manager on; elsewhere a no-op
    if dataclasses.is_dataclass(cls_or_cfg) and not isinstance(cls_or_cfg, type):
        value, cls = cls_or_cfg, type(cls_or_cfg)
    else:
        cls = cls_or_cfg
    if templates is True:
        templates = templates_for(cls)
    return ConfigForm(cls, value=value, template=template, templates=templates or None, title=title)
