"""Prompt lines in kohya sd-scripts' sample-prompt syntax, from a file or typed in a form.

Owns ``PromptSpec``, ``parse_prompt_line`` and ``read_prompts``. One prompt per line, options after `` --``
(sd-scripts ``train_util.line_to_prompt_dict``, read for the flag letters):

    a cat on a sofa, photo --n blurry, lowres --w 1024 --h 768 --d 42 --s 28 --l 6.5 --ss DPM++ 2M Karras

``--n`` negative prompt, ``--w``/``--h`` size, ``--d`` seed, ``--s`` steps, ``--l`` CFG scale, ``--ss`` sampler.
Blank lines and lines starting with ``#`` are skipped. Unlike sd-scripts, which logs and ignores what it cannot
read, a bad line is an error naming the file, the line number and what is wrong, before any GPU time is spent.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from helpers.generation.samplers import SamplerError, find_sampler

FLAGS = {"n": "negative prompt", "w": "width", "h": "height", "d": "seed", "s": "steps", "l": "CFG scale",
         "ss": "sampler"}
# flags sd-scripts knows for other model families or extensions: named so the error says why they are refused
OTHER_FLAGS = {"cn": "ControlNet image", "am": "attention mask", "g": "guidance (Flux)", "fs": "flow shift",
               "ctr": "CFG truncation", "rcfg": "renorm CFG", "f": "frame count", "i": "init image"}


class PromptFileError(ValueError):
    """A prompt line that does not parse; the message names the file, the line and the fix."""


@dataclass
class PromptSpec:
    """One prompt and the settings its line overrides (None = use the defaults)."""

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    steps: int | None = None
    cfg: float | None = None
    sampler: str | None = None

    def overrides(self) -> dict:
        """The fields this line sets, named as in ``ImageSettings``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def to_line(self) -> str:
        """This spec back in kohya syntax."""
        flags = {"n": self.negative_prompt, "w": self.width, "h": self.height, "d": self.seed, "s": self.steps,
                 "l": self.cfg, "ss": self.sampler}
        return self.prompt + "".join(f" --{k} {v}" for k, v in flags.items() if v is not None)


def _int(value: str, what: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{what} must be a whole number, got {value!r}") from None
    if not low <= number <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {number}")
    return number


def _option(spec: PromptSpec, flag: str, value: str) -> None:
    if flag == "n":
        spec.negative_prompt = value
    elif flag in ("w", "h"):
        size = _int(value, FLAGS[flag], 64, 8192)
        if size % 8:
            raise ValueError(f"{FLAGS[flag]} must be a multiple of 8, got {size}")
        setattr(spec, "width" if flag == "w" else "height", size)
    elif flag == "d":
        spec.seed = _int(value, "seed", 0, 2**32 - 1)
    elif flag == "s":
        spec.steps = _int(value, "steps", 1, 1000)
    elif flag == "l":
        try:
            spec.cfg = float(value)
        except ValueError:
            raise ValueError(f"CFG scale must be a number, got {value!r}") from None
        if not 0 <= spec.cfg <= 100:
            raise ValueError(f"CFG scale must be between 0 and 100, got {value}")
    elif flag == "ss":
        spec.sampler = find_sampler(value).name


def parse_prompt_line(line: str, *, where: str = "prompt") -> PromptSpec:
    """Parse one kohya-syntax line; ``where`` ("file.txt, line 3") prefixes any error."""
    text = line.strip()
    if text.startswith("--"):
        raise PromptFileError(f"{where}: the line starts with an option but has no prompt: {text!r}")
    head, *options = text.split(" --")
    spec = PromptSpec(prompt=head.strip())
    if not spec.prompt:
        raise PromptFileError(f"{where}: empty prompt")
    for option in options:
        flag, _, value = option.strip().partition(" ")
        flag, value = flag.lower(), value.strip()
        if flag not in FLAGS:
            why = f"{OTHER_FLAGS[flag]} is not supported for SDXL / SD 1.5 here" if flag in OTHER_FLAGS else \
                "unknown option"
            raise PromptFileError(f"{where}: --{flag}: {why}; known options: "
                                  + ", ".join(f"--{k} ({v})" for k, v in FLAGS.items()))
        if not value and flag != "n":
            raise PromptFileError(f"{where}: --{flag} needs a value ({FLAGS[flag]})")
        try:
            _option(spec, flag, value)
        except (ValueError, SamplerError) as exc:
            raise PromptFileError(f"{where}: --{flag}: {exc}") from None
    return spec


def parse_prompt_lines(lines: list[str], source: str = "prompts") -> list[PromptSpec]:
    """Every prompt in ``lines`` (blank and ``#`` lines skipped); errors say ``source, line N``."""
    specs = []
    for number, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            specs.append(parse_prompt_line(line, where=f"{source}, line {number}"))
    return specs


def read_prompts(path: str | os.PathLike) -> list[PromptSpec]:
    """The prompts of a kohya-style ``.txt`` prompt file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    if path.suffix.lower() != ".txt":
        raise PromptFileError(f"{path}: prompt files are plain text (.txt), one prompt per line with --n/--w/--h/"
                              "--d/--s/--l/--ss options")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    specs = parse_prompt_lines(text.splitlines(), str(path))
    if not specs:
        raise PromptFileError(f"{path}: no prompts (every line is blank or a # comment)")
    return specs
