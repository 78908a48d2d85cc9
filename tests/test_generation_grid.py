"""XY(Z) grids: axis syntax, which settings each cell gets, labelled pages, one PNG per cell with its parameters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from helpers.generation.grid import GridError, make_axis, parse_axis, plan_cells, render_grid
from helpers.generation.loras import LoraSpec
from helpers.generation.parameters import parse_parameters, read_png_parameters
from helpers.generation.pipeline import ImageSettings

BASE = ImageSettings(prompt="a blue circle", steps=3, seed=5, width=64, height=64)


def test_axis_syntax(tmp_path):
    assert parse_axis("cfg=4, 7.5,10").values == [4.0, 7.5, 10.0]
    assert parse_axis("seed=1-4").values == [1, 2, 3, 4] and parse_axis("steps=10-30 (+10)").values == [10, 20, 30]
    axis = parse_axis('prompt="a cat, photo",a dog --n ugly --s 9')
    assert [p.prompt for p in axis.values] == ["a cat, photo", "a dog"] and axis.values[1].steps == 9
    assert parse_axis("sampler=euler_a,dpmpp_2m_karras").values == ["Euler a", "DPM++ 2M Karras"]
    assert parse_axis("lora=0,1").labels == ["LoRA 0 (base)", "LoRA 1"]
    (tmp_path / "p.txt").write_text("# prompts\nfirst\nsecond, with comma\n", encoding="utf-8")
    assert [p.prompt for p in parse_axis(f"prompt=@{tmp_path / 'p.txt'}").values] == ["first", "second, with comma"]
    assert make_axis("checkpoint", ["runs/x/checkpoints/x-e0003.safetensors", "x-s00000120.safetensors",
                                    "base"]).labels == ["epoch 3", "step 120", "base model"]


@pytest.mark.parametrize("text, message", [
    ("colour=red", "unknown axis 'colour'"),
    ("cfg", "write it as kind=value1,value2"),
    ("cfg=high", "axis cfg: could not convert"),
    ("sampler=Euler b", "axis sampler: unknown sampler"),
    ("steps=0,5", "steps must be at least 1"),
    ("prompt=a cat --s x", "axis prompt, value 1: --s: steps must be a whole number"),
])
def test_bad_axes_say_how(text, message):
    with pytest.raises(GridError, match=message):
        parse_axis(text)


def test_cell_plan_puts_loras_and_strengths_where_they_belong(tmp_path, tiny_sdxl_dir):
    from tests.test_generation_lora import synthetic_lora

    e1 = synthetic_lora(tiny_sdxl_dir, tmp_path / "run-e0001.safetensors")
    e2 = synthetic_lora(tiny_sdxl_dir, tmp_path / "run-e0002.safetensors", seed=1)
    style = LoraSpec(tmp_path / "style.safetensors", 0.3)
    axes = [make_axis("checkpoint", ["base", str(e1), str(e2)]), make_axis("strength", [0.0, 1.0]),
            make_axis("cfg", [3, 9])]
    cells = plan_cells(axes, BASE, "base.safetensors", [style])
    assert len(cells) == 12 and {c.page for c in cells} == {0, 1}
    cell = next(c for c in cells if (c.page, c.row, c.column) == (1, 1, 2))
    assert cell.settings.cfg == 9 and cell.model == "base.safetensors"
    assert cell.loras == (LoraSpec(e2, 1.0), style)  # the epoch's LoRA takes the strength; the fixed one keeps its own
    assert next(c for c in cells if (c.row, c.column) == (1, 0)).loras == (style,)
    with pytest.raises(GridError, match="strength axis needs a LoRA"):
        plan_cells([make_axis("strength", [0, 1])], BASE, "m", [])
    with pytest.raises(GridError, match="each axis kind may appear once"):
        plan_cells([make_axis("cfg", [1]), make_axis("cfg", [2])], BASE, "m", [])


def test_grid_writes_labelled_pages_and_every_cell(tmp_path, tiny_sdxl_dir):
    axes = [parse_axis("cfg=2,8"), parse_axis('prompt="a red circle, flat",a green square'),
            parse_axis("sampler=Euler a,DDIM")]
    result = render_grid(tiny_sdxl_dir, axes, tmp_path / "grid", base=BASE, progress=False)
    assert [p.name for p in result.pages] == ["grid-page01.png", "grid-page02.png"]
    cells = sorted((tmp_path / "grid" / "cells").glob("*.png"))
    assert len(cells) == 8
    params = parse_parameters(read_png_parameters(tmp_path / "grid" / "cells" / "p02-y01-x02.png"))
    assert (params.cfg, params.prompt, params.sampler, params.seed) == (8.0, "a red circle, flat", "DDIM", 5)
    with Image.open(result.pages[0]) as page:
        assert page.width > 2 * 64 and page.height > 2 * 64  # labels besides two cells per row
        assert read_png_parameters(result.pages[0]).startswith("a red circle, flat")
    manifest = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [a["labels"] for a in manifest["axes"]][0] == ["CFG 2", "CFG 8"] and len(manifest["cells"]) == 8
    a = np.asarray(Image.open(tmp_path / "grid" / "cells" / "p01-y01-x01.png"))
    b = np.asarray(Image.open(tmp_path / "grid" / "cells" / "p01-y01-x02.png"))
    assert not np.array_equal(a, b)  # CFG changed the picture
    with pytest.raises(FileExistsError, match="already holds a grid"):
        render_grid(tiny_sdxl_dir, axes, tmp_path / "grid", base=BASE, progress=False)


def test_lora_strength_axis_has_the_base_as_strength_zero(tmp_path, tiny_sdxl_dir):
    from tests.test_generation_lora import synthetic_lora

    lora = synthetic_lora(tiny_sdxl_dir, tmp_path / "l.safetensors", scale=0.1)
    result = render_grid(tiny_sdxl_dir, [parse_axis("strength=0,1"), parse_axis("seed=1,2")], tmp_path / "g",
                         base=BASE, loras=[LoraSpec(lora)], progress=False)
    render_grid(tiny_sdxl_dir, [parse_axis("seed=1,2")], tmp_path / "plain", base=BASE, progress=False)
    for row in (1, 2):
        zero = np.asarray(Image.open(tmp_path / "g" / "cells" / f"y{row:02d}-x01.png"))
        one = np.asarray(Image.open(tmp_path / "g" / "cells" / f"y{row:02d}-x02.png"))
        base = np.asarray(Image.open(tmp_path / "plain" / "cells" / f"y01-x{row:02d}.png"))
        assert np.array_equal(zero, base) and not np.array_equal(one, base)
    assert "<lora:l:1>" in read_png_parameters(tmp_path / "g" / "cells" / "y01-x02.png")
    assert len(result.cells) == 4


def test_guide_review_replays_captions_and_generic_prompts(tmp_path, tiny_sdxl_dir):
    from helpers.generation.review import aspect_size, guide_review

    assert aspect_size(1500, 1000, 1024) == (1280, 832) and aspect_size(100, 100, 64, 32) == (64, 64)
    data = tmp_path / "data"
    data.mkdir()
    for i, colour in enumerate(["red", "blue", "green"]):
        Image.new("RGB", (96 if i else 64, 64), colour).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"a {colour} thing", encoding="utf-8")
    pages = guide_review(tiny_sdxl_dir, tmp_path / "review", dataset=data, base=BASE, caption_limit=2,
                         generic_prompts=("a cat", "a house"), progress=False)
    assert [p.name for p in pages["captions"]] == ["grid.png"] and [p.name for p in pages["generic"]] == ["grid.png"]
    generic = sorted((tmp_path / "review" / "generic" / "cells").glob("*.png"))
    assert len(generic) == 2 * 4  # batches of 4
    seeds = sorted(parse_parameters(read_png_parameters(p)).seed for p in generic if p.name.startswith("y01"))
    assert seeds == [5, 6, 7, 8]
    captions = [parse_parameters(read_png_parameters(p)).prompt
                for p in sorted((tmp_path / "review" / "captions" / "cells").glob("*.png"))]
    assert captions == ["a red thing", "a green thing"]
