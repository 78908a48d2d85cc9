"""The WD tagger (SmilingWolf's Danbooru taggers, v2 and v3) run with onnxruntime: fetch, load, tag images.

A tagger folder holds ``model.onnx`` and ``selected_tags.csv`` (header ``tag_id,name,category,count``; rows in
output order; category 9 = rating, 0 = general, 4 = character). Preprocessing follows the reference Space
(SmilingWolf/wd-tagger ``app.py``): alpha composited on white, padded to a centred white square, PIL bicubic
resize to the model's own input size, float 0-255 (the graph normalises), BGR channel order, NHWC batches.
The outputs are already sigmoid probabilities.

Devices: the CUDA execution provider when a GPU is present (``onnxruntime-gpu``), the CPU otherwise; a GPU
with an onnxruntime that cannot use it is an error that names the mismatch, never a silent 50x slowdown.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from PIL import Image

from helpers.captioning import sidecar
from helpers.captioning.images import iter_batches
from helpers.captioning.tags import RATING_TAGS, UnderscoreRule, format_tag, mcut_threshold, merge_tags, remove_tags
from helpers.changes import write_text_atomic
from helpers.config import option
from helpers.dataset.files import list_images

# short name -> Hub repo; v3 models are trained on Danbooru up to 2024-02 (10861 classes), v2 up to 2022
TAGGER_REPOS = {
    "eva02-large-v3": "SmilingWolf/wd-eva02-large-tagger-v3",
    "vit-large-v3": "SmilingWolf/wd-vit-large-tagger-v3",
    "vit-v3": "SmilingWolf/wd-vit-tagger-v3",
    "swinv2-v3": "SmilingWolf/wd-swinv2-tagger-v3",
    "convnext-v3": "SmilingWolf/wd-convnext-tagger-v3",
    "moat-v2": "SmilingWolf/wd-v1-4-moat-tagger-v2",
    "swinv2-v2": "SmilingWolf/wd-v1-4-swinv2-tagger-v2",
    "convnext-v2": "SmilingWolf/wd-v1-4-convnext-tagger-v2",
    "vit-v2": "SmilingWolf/wd-v1-4-vit-tagger-v2",
}
DEFAULT_TAGGER = "eva02-large-v3"
MODEL_FILE, TAGS_FILE, SOURCE_FILE = "model.onnx", "selected_tags.csv", "source.json"
RATING, GENERAL, CHARACTER = 9, 0, 4
RATING_WORDS = ("general", "sensitive", "questionable", "explicit")


class TaggerError(RuntimeError):
    """The tagger cannot run: missing/broken files, or onnxruntime and the GPU do not fit."""


@dataclass
class TaggerConfig:
    """What the WD tagger does to a dataset (a form in notebook 03, flags of ``python -m helpers.captioning tag``)."""

    format_version: ClassVar[int] = 1

    model: str = option(DEFAULT_TAGGER, help="tagger: a short name (" + ", ".join(TAGGER_REPOS) + "), a Hub repo "
                        "id, or a folder holding model.onnx + selected_tags.csv")
    general_threshold: float = option(0.35, help="keep general tags scored above this (EVA02-L's own P=R point "
                                      "is 0.53: raise it for fewer, surer tags)", min=0.0, max=1.0, step=0.01)
    character_threshold: float = option(0.85, help="keep character tags scored above this", min=0.0, max=1.0,
                                        step=0.01)
    general_mcut: bool = option(False, help="pick the general threshold per image with MCut (largest score gap)",
                                group="advanced")
    character_mcut: bool = option(False, help="pick the character threshold per image with MCut (at least 0.15)",
                                  group="advanced")
    character_first: bool = option(True, help="put character tags before general tags")
    rating_tag: Literal["none", "first", "last"] = option("none", help="add the rating (general / sensitive / "
                                                          "questionable / explicit) as a tag")
    rating_words: Literal["danbooru", "kohaku"] = option("danbooru", help="rating tag words: Danbooru's (general, "
                                                         "sensitive, questionable, explicit) or Kohaku XL's (safe, "
                                                         "sensitive, nsfw, nsfw + explicit)")
    undesired_tags: list[str] = option([], help="tags never written (a * is a wildcard, e.g. 'text*')")
    always_first_tags: list[str] = option([], help="tags moved to the front when present, e.g. 1girl, 1boy",
                                          group="advanced")
    underscores: UnderscoreRule = option("both", help="underscores to spaces: 'both' keeps them in emoticons and "
                                         "tags of 3 characters or fewer, 'length' only the latter (kohya/Kohaku), "
                                         "'kaomoji' only the former, 'keep' leaves Danbooru names as they are",
                                         group="advanced")
    escape_brackets: bool = option(False, help="write \\( \\) for A1111 prompt syntax (leave off for training "
                                   "captions)", group="advanced")
    mode: Literal["overwrite", "append", "prepend"] = option("overwrite", help="what to do with tags an image "
                                                              "already has: replace them (a trigger word too: add "
                                                              "it again after), or add the new ones after / "
                                                              "before them")
    skip_tagged: bool = option(True, help="skip images that already have tags (untick to tag them again)")
    batch_size: int = option(8, help="images per onnxruntime call", min=1, max=256)
    device: Literal["auto", "cuda", "cpu"] = option("auto", help="auto: the GPU when there is one",
                                                    group="advanced")
    workers: int = option(0, help="threads decoding images ahead of the model (0: one per core, up to 8)",
                          min=0, max=64, group="advanced")


# ---------------------------------------------------------------------------------------------------- model files
def tagger_repo(model: str) -> str:
    """A short name or repo id -> the Hub repo id."""
    return TAGGER_REPOS.get(model, model)


def tagger_folder_name(model: str) -> str:
    return tagger_repo(model).split("/")[-1]


def is_tagger_folder(folder: Path) -> bool:
    return (folder / MODEL_FILE).is_file() and (folder / TAGS_FILE).is_file()


def fetch_tagger(model: str, models_dir: str | os.PathLike, *, revision: str | None = None,
                 token: str | bool | None = None) -> Path:
    """The local folder of tagger ``model``: an existing folder (a path, or a folder name in ``models_dir``) as is,
    else the Hub repo downloaded into ``models_dir/<repo name>`` (once; later calls reuse it). Only ``model.onnx``
    and ``selected_tags.csv`` are downloaded.
    """
    local = Path(model).expanduser()
    if not local.is_dir() and (Path(models_dir) / model).is_dir():
        local = Path(models_dir) / model  # a tagger already in the workspace, named by its folder
    if local.is_dir():
        if not is_tagger_folder(local):
            raise TaggerError(f"{local} is not a tagger folder: it needs {MODEL_FILE} and {TAGS_FILE}")
        return local
    repo = tagger_repo(model)
    if repo.count("/") != 1:
        raise TaggerError(f"unknown tagger {model!r}: use one of {', '.join(TAGGER_REPOS)}, a Hub repo id "
                          "(owner/name) or a folder with model.onnx + selected_tags.csv")
    dest = Path(models_dir) / tagger_folder_name(repo)
    if is_tagger_folder(dest):
        return dest
    from huggingface_hub import hf_hub_download

    dest.mkdir(parents=True, exist_ok=True)
    for filename in (TAGS_FILE, MODEL_FILE):
        try:
            hf_hub_download(repo_id=repo, filename=filename, revision=revision, token=token, local_dir=dest)
        except Exception as exc:  # network, 404, gated repo, offline mode: say which file and what to do
            raise TaggerError(f"could not download {filename} of {repo}: {exc}. Check the repo id and your "
                              f"connection, or copy {MODEL_FILE} and {TAGS_FILE} into {dest} yourself") from exc
    write_source(dest, {"repo": repo, "revision": revision or "main", "files": [MODEL_FILE, TAGS_FILE]})
    return dest


def write_source(folder: Path, info: dict) -> None:
    write_text_atomic(folder / SOURCE_FILE, json.dumps(info, indent=2) + "\n")


@dataclass(frozen=True)
class TagTable:
    """``selected_tags.csv``: names and categories in model output order."""

    names: tuple[str, ...]
    categories: np.ndarray  # int per output

    def indices(self, category: int) -> np.ndarray:
        return np.flatnonzero(self.categories == category)


def read_tag_table(path: str | os.PathLike) -> TagTable:
    """Read ``selected_tags.csv`` (rows in output order; only ``name`` and ``category`` are needed)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"name", "category"} - set(reader.fieldnames or ())
            if missing:
                raise TaggerError(f"{path}: header lacks {', '.join(sorted(missing))} (expected "
                                  "tag_id,name,category,count)")
            names, cats = [], []
            for line, row in enumerate(reader, start=2):
                try:
                    cats.append(int(row["category"]))
                except (TypeError, ValueError):
                    raise TaggerError(f"{path} line {line}: category {row['category']!r} is not a number") from None
                names.append(row["name"])
    except FileNotFoundError:
        raise TaggerError(f"tag table not found: {path}") from None
    except UnicodeDecodeError:
        raise TaggerError(f"{path} is not UTF-8 text") from None
    table = TagTable(tuple(names), np.asarray(cats, dtype=np.int64))
    if len(table.indices(RATING)) != 4:
        raise TaggerError(f"{path}: expected 4 rating rows (category 9), found {len(table.indices(RATING))}")
    return table


# ------------------------------------------------------------------------------------------------------- devices
def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU the driver exposes (torch if it has CUDA, else nvidia-smi)."""
    try:
        import torch

        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidiactl").exists()


def choose_providers(device: str, available: Sequence[str], has_gpu: bool) -> list[str]:
    """onnxruntime providers for ``device`` ("auto", "cuda", "cpu"); raises when the GPU cannot be used."""
    if device == "cpu" or (device == "auto" and not has_gpu):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    import onnxruntime as ort

    where = "this machine has a GPU, but " if has_gpu else ""
    raise TaggerError(f"{where}onnxruntime {ort.__version__} has no CUDA provider (it offers "
                      f"{', '.join(available)}). Install the GPU build: pip uninstall -y onnxruntime && "
                      f"pip install onnxruntime-gpu=={ort.__version__}; or tag on the CPU (device='cpu', slow)")


def describe_cuda_mismatch() -> str:
    """One line naming the CUDA versions onnxruntime and torch were built for (what usually does not fit)."""
    import onnxruntime as ort

    ort_cuda = getattr(ort, "cuda_version", "") or "unknown"
    try:
        import torch

        torch_cuda = torch.version.cuda or "none"
    except ImportError:
        torch_cuda = "torch not installed"
    return (f"onnxruntime {ort.__version__} is built for CUDA {ort_cuda}, torch for CUDA {torch_cuda}; the "
            "CUDA provider also needs the matching cuDNN and the nvidia-*-cu12 libraries on the library path")


@dataclass
class Tagger:
    """A loaded tagger: the onnxruntime session, its input size and the tag table."""

    session: object
    table: TagTable
    size: int
    input_name: str
    output_name: str
    folder: Path
    providers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        try:
            return json.loads((self.folder / SOURCE_FILE).read_text(encoding="utf-8"))["repo"]
        except (OSError, ValueError, KeyError):
            return self.folder.name


def load_tagger(folder: str | os.PathLike, device: str = "auto") -> Tagger:
    """Open ``model.onnx`` on ``device``; the input size and tensor names are read from the model itself."""
    import onnxruntime as ort

    folder = Path(folder)
    if not is_tagger_folder(folder):
        raise TaggerError(f"{folder} is not a tagger folder: it needs {MODEL_FILE} and {TAGS_FILE}")
    table = read_tag_table(folder / TAGS_FILE)
    providers = choose_providers(device, ort.get_available_providers(), device == "auto" and gpu_present())
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), providers=providers)
    except Exception as exc:
        raise TaggerError(f"onnxruntime cannot open {folder / MODEL_FILE}: {exc}. The v3 taggers need "
                          f"onnxruntime >= 1.17 (this is {ort.__version__}); re-download the file if it is "
                          "truncated") from exc
    if providers[0] == "CUDAExecutionProvider" and "CUDAExecutionProvider" not in session.get_providers():
        # onnxruntime falls back to the CPU with only a log line when the CUDA libraries do not load
        raise TaggerError("onnxruntime could not start its CUDA provider: " + describe_cuda_mismatch() +
                          ". Fix the install, or tag on the CPU (device='cpu', slow)")
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    shape = list(inp.shape)
    if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
        raise TaggerError(f"{folder / MODEL_FILE}: input {inp.name} has shape {shape}; a WD tagger takes "
                          "[batch, size, size, 3] (NHWC)")
    n_out = out.shape[-1]
    if isinstance(n_out, int) and n_out != len(table.names):
        raise TaggerError(f"{folder}: the model has {n_out} outputs but {TAGS_FILE} lists {len(table.names)} "
                          "tags: the two files come from different models")
    return Tagger(session, table, int(shape[1]), inp.name, out.name, folder, list(session.get_providers()))


# -------------------------------------------------------------------------------------------------- preprocessing
def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """One image as the tagger expects it: [size, size, 3] float32, BGR, 0-255, on white, padded square."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)  # transparent pixels become white, as the model saw in training
        image = canvas.convert("RGB")
    elif image.mode != "RGB":
        image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def predict_batch(tagger: Tagger, arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Probabilities [N, n_tags] for prepared images."""
    batch = np.ascontiguousarray(np.stack(arrays).astype(np.float32))
    return np.asarray(tagger.session.run([tagger.output_name], {tagger.input_name: batch})[0])


# -------------------------------------------------------------------------------------------------- tag selection
@dataclass
class TagPrediction:
    """What the tagger saw in one image (names are raw Danbooru names, scores are probabilities)."""

    rating: str
    rating_scores: dict[str, float]
    general: list[tuple[str, float]]
    character: list[tuple[str, float]]


def select_tags(probs: np.ndarray, table: TagTable, general_threshold: float = 0.35,
                character_threshold: float = 0.85, general_mcut: bool = False,
                character_mcut: bool = False) -> TagPrediction:
    """Tags above their thresholds (strict ``>``, as the reference Space), best first; rating by argmax."""
    r_idx, g_idx, c_idx = table.indices(RATING), table.indices(GENERAL), table.indices(CHARACTER)
    rating_scores = {table.names[i]: float(probs[i]) for i in r_idx}
    rating = max(rating_scores, key=rating_scores.__getitem__)
    if general_mcut:
        general_threshold = mcut_threshold(probs[g_idx])
    if character_mcut:
        character_threshold = max(0.15, mcut_threshold(probs[c_idx]))

    def above(idx: np.ndarray, thr: float) -> list[tuple[str, float]]:
        hits = [(table.names[i], float(probs[i])) for i in idx if probs[i] > thr]
        return sorted(hits, key=lambda item: -item[1])

    return TagPrediction(rating, rating_scores, above(g_idx, general_threshold),
                         above(c_idx, character_threshold))


def prediction_tags(pred: TagPrediction, *, character_first: bool = True, rating_tag: str = "none",
                    undesired: Iterable[str] = (), always_first: Iterable[str] = (),
                    underscores: UnderscoreRule = "both", escape: bool = False,
                    rating_words: str = "danbooru") -> list[str]:
    """The caption tags for one prediction, in order, as text."""
    general = [format_tag(n, underscores, escape) for n, _ in pred.general]
    character = [format_tag(n, underscores, escape) for n, _ in pred.character]
    tags = character + general if character_first else general + character
    firsts = [format_tag(t, underscores, escape) for t in always_first]
    tags = [t for t in firsts if t in tags] + [t for t in tags if t not in firsts]
    if rating_words == "kohaku":
        rating = list(RATING_TAGS.get(pred.rating, [])) if rating_tag != "none" else []
    else:
        rating = [format_tag(pred.rating, underscores, escape)] if rating_tag != "none" else []
    tags = rating + tags if rating_tag == "first" else tags + rating
    return remove_tags(tags, undesired)


# -------------------------------------------------------------------------------------------------------- running
@dataclass
class TaggedImage:
    image: Path
    tags: list[str]
    prediction: TagPrediction


def iter_tag_images(tagger: Tagger, images: Sequence[Path], cfg: TaggerConfig,
                    problems: dict[Path, str] | None = None, progress: bool = True) -> Iterator[TaggedImage]:
    """Tag ``images`` in batches (decoded ahead in threads); an unreadable image is recorded in ``problems``."""
    from functools import partial

    from tqdm.auto import tqdm

    problems = problems if problems is not None else {}
    with tqdm(total=len(images), desc="tagging", unit="img", disable=not progress) as bar:
        for start, (paths, arrays) in zip(range(0, len(images), cfg.batch_size),
                                          iter_batches(images, cfg.batch_size, partial(prepare_image, size=tagger.size),
                                                       problems, cfg.workers or None), strict=True):
            if paths:
                probs = predict_batch(tagger, arrays)
                for path, row in zip(paths, probs, strict=True):
                    pred = select_tags(row, tagger.table, cfg.general_threshold, cfg.character_threshold,
                                       cfg.general_mcut, cfg.character_mcut)
                    tags = prediction_tags(pred, character_first=cfg.character_first, rating_tag=cfg.rating_tag,
                                           undesired=cfg.undesired_tags, always_first=cfg.always_first_tags,
                                           underscores=cfg.underscores, escape=cfg.escape_brackets,
                                           rating_words=cfg.rating_words)
                    yield TaggedImage(path, tags, pred)
            bar.update(len(images[start:start + cfg.batch_size]))


def images_per_second(count: int, started: float) -> float:
    elapsed = time.perf_counter() - started
    return count / elapsed if elapsed > 0 else 0.0


# ---------------------------------------------------------------------------------------------- whole datasets
@dataclass
class TaggingReport:
    """What ``tag_dataset`` did."""

    tagger: str
    providers: list[str]
    tagged: int = 0
    skipped: int = 0
    images_per_second: float = 0.0
    problems: dict[Path, str] = field(default_factory=dict)
    edit: object = None  # sidecar.EditWriter: what was written, for undo

    def summary(self) -> dict[str, object]:
        out = {"tagger": self.tagger, "providers": self.providers, "tagged": self.tagged, "skipped": self.skipped,
               "images_per_second": round(self.images_per_second, 2), "problems": len(self.problems)}
        if self.edit is not None:
            out["undo"] = [str(p) for p in self.edit.backup_dirs]
        return out


def tag_dataset(folder: str | os.PathLike, cfg: TaggerConfig, models_dir: str | os.PathLike,
                render=None, progress: bool = True, tagger: Tagger | None = None) -> TaggingReport:
    """Tag every image under ``folder`` into its caption record, then (with ``render``) re-render the ``.txt``.

    Images that already have tags are skipped when ``cfg.skip_tagged``; unreadable images and caption files
    are reported in ``problems`` and left untouched. Every write is a backed-up change set.
    """
    if tagger is None:
        tagger = load_tagger(fetch_tagger(cfg.model, models_dir), cfg.device)
    images = list_images(folder)
    records, problems = sidecar.load_records(images)
    todo = [p for p in images if p in records and not (cfg.skip_tagged and records[p].tags)]
    report = TaggingReport(tagger.name, tagger.providers, skipped=len(records) - len(todo), problems=problems)
    writer = sidecar.EditWriter(render)
    started = time.perf_counter()
    for item in iter_tag_images(tagger, todo, cfg, problems, progress):
        record = records[item.image].copy()
        record.tags = merge_tags(record.tags, item.tags, cfg.mode)
        record.keep = record.keep if cfg.mode == "append" else 0
        named = {format_tag(n, cfg.underscores, cfg.escape_brackets): s
                 for n, s in item.prediction.general + item.prediction.character}
        scores = {t: named[t] for t in item.tags if t in named}
        record.scores = scores if cfg.mode == "overwrite" else {**record.scores, **scores}
        record.rating = item.prediction.rating
        record.sources["tags"] = tagger.name
        writer.add(item.image, record)
    writer.flush()
    report.tagged = writer.count
    report.images_per_second = images_per_second(writer.count, started)
    report.edit = writer if writer.edits else None
    report.problems.update(writer.problems)
    return report
