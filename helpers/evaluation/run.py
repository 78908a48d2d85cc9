"""``evaluate_run``: the grids of a run (checkpoints × LoRA strengths × prompt sets) through the generation core,
embedded once per encoder, scored per checkpoint and strength, a checkpoint chosen, ``metrics.json``, charts and
``report.html`` written into ``<run>/evaluation/``.

Variants: strength 0 is the base model (generated once, shared by every checkpoint); a checkpoint with a LoRA
(extracted in notebook 05, found as ``exports/<run>-e<epoch>*.safetensors``) is the base plus that LoRA at each
strength; a checkpoint without one is the checkpoint itself (strength 1 only, others noted as skipped).
Prompt sets (pages): ``captions`` (training captions, at their images' aspect), ``new`` (unseen prompts with the
trigger), ``trigger`` (the trigger alone), and ``preservation`` (unrelated prompts, no trigger: compared image
by image with the base's, same seeds).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from helpers.changes import write_text_atomic
from helpers.evaluation import metrics as M
from helpers.evaluation.inputs import Checkpoint, RunInputs, read_inputs
from helpers.evaluation.outcome import Evaluation, Recommendation, Variant
from helpers.evaluation.settings import EvalSettings, EvaluationError
from helpers.workspace import Workspace

EVAL_DIR = "evaluation"
ENCODER_NAMES = {"clip": "clip-vit-large-patch14", "siglip": "siglip-so400m"}


def plan_variants(inputs: RunInputs, settings: EvalSettings) -> tuple[list[Variant], list[str]]:
    variants = [Variant("base model", 0.0, str(inputs.base))]
    notes = []
    for ck in inputs.checkpoints:
        for s in sorted({float(x) for x in settings.strengths}):
            if s == 0:
                continue
            if ck.lora is not None:
                variants.append(Variant(ck.label, s, str(inputs.base), str(ck.lora), ck.epoch))
            elif s == 1.0:
                variants.append(Variant(ck.label, 1.0, str(ck.path), None, ck.epoch))
        if ck.lora is None and any(float(x) not in (0.0, 1.0) for x in settings.strengths):
            notes.append(f"{ck.label}: no LoRA extracted from {ck.path.name}, so only strength 1 (the checkpoint "
                         f"itself) is evaluated; extract one (notebook 05, exports/{inputs.run.name}-e"
                         f"{ck.epoch or 0:04d}.safetensors) to evaluate other strengths")
    return variants, notes


def prompt_sets(inputs: RunInputs, settings: EvalSettings, side: int, multiple: int) -> dict[str, list]:
    """{set: [(PromptSpec, training image or None)]} for each prompt set asked for, plus ``preservation``."""
    from helpers.generation.prompts import PromptSpec
    from helpers.generation.review import GENERIC_PROMPTS, training_captions

    trigger = ", ".join(inputs.triggers)
    out: dict[str, list] = {}
    if "captions" in settings.prompt_sets:
        pairs = training_captions(inputs.dataset, settings.caption_prompts, side, multiple)
        out["captions"] = [(spec, path) for path, spec in pairs]
    if "new" in settings.prompt_sets:
        if settings.new_prompts:
            texts = [p.replace("{trigger}", trigger).strip(" ,") for p in settings.new_prompts]
        else:
            texts = [f"{trigger}, {p}" if trigger else p for p in GENERIC_PROMPTS[:settings.new_prompt_count]]
        out["new"] = [(PromptSpec(prompt=t), None) for t in texts if t]
    if "trigger" in settings.prompt_sets and inputs.triggers:
        out["trigger"] = [(PromptSpec(prompt=t), None) for t in inputs.triggers]
    if settings.preservation_prompts:
        unrelated = list(GENERIC_PROMPTS[::-1][:settings.preservation_prompts])
        out["preservation"] = [(PromptSpec(prompt=p), None) for p in unrelated]
    return out


def _open_encoder(kind: str, path: str, ws: Workspace, device: str, notes: list[str], uses: str):
    """An encoder, or None with a note saying what is skipped (never a stop: the other metrics go on)."""
    from helpers.models.encoders import EncoderError, load_encoder

    try:
        return load_encoder(path or kind, ws.models, device)
    except EncoderError as exc:
        notes.append(f"{uses} skipped: {exc}")
        return None


def _prepare_folder(folder: Path, overwrite: bool) -> None:
    if (folder / "metrics.json").exists() and not overwrite:
        raise EvaluationError(f"{folder} already holds an evaluation: pass overwrite=True (--overwrite) to replace it")
    for name in ("grids", "charts", "flagged"):
        shutil.rmtree(folder / name, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def generate(inputs: RunInputs, settings: EvalSettings, variants: list[Variant], sets: dict[str, list],
             folder: Path, progress: bool) -> dict[str, list]:
    """Render every cell (model by model, through ``helpers.generation``); per set the list of cells, and a
    labelled grid page per set in ``grids/<set>/``."""
    from helpers.generation.grid import Axis, Cell, draw_pages, render_cells
    from helpers.generation.loras import LoraSpec
    from helpers.generation.pipeline import ImageSettings, open_generator

    base = ImageSettings(negative_prompt=settings.negative_prompt, steps=settings.steps, cfg=settings.cfg,
                         sampler=settings.sampler, seed=settings.seed, width=settings.width,
                         height=settings.height, batch_size=settings.images_per_prompt)
    cells, by_set = [], {}
    for page, (name, prompts) in enumerate(sets.items()):
        by_set[name] = []
        for row, (spec, _) in enumerate(prompts):
            for column, v in enumerate(variants):
                loras = (LoraSpec(Path(v.lora), v.strength),) if v.lora else ()
                cell = Cell(page, row, column, replace(base, **spec.overrides()), v.model, loras)
                cells.append(cell)
                by_set[name].append(cell)

    def open_model(src):
        return open_generator(src, device=settings.device, batch_size=settings.batch_limit, echo=lambda _m: None)

    render_cells(cells, folder / "grids", open_model=open_model, batch_limit=settings.batch_limit, progress=progress)
    labels = [v.key for v in variants]
    for name, prompts in sets.items():
        set_cells = [replace(c, page=0) for c in by_set[name]]
        x = Axis("checkpoint", [v.key for v in variants], labels)
        y = Axis("prompt", [s for s, _ in prompts], [s.prompt for s, _ in prompts])
        reference = None
        if name == "captions":
            from helpers.dataset.embeddings import open_training_image

            reference = [open_training_image(p) for _, p in prompts]
        draw_pages(set_cells, [x, y], folder / "grids" / name, reference=reference, cell_size=min(
            256, max(max(i.image.size) for c in set_cells for i in c.images)))
    return by_set


def _embed_cells(encoder, by_set: dict[str, list]) -> dict[str, np.ndarray]:
    """{set: (cells × images, d)} rows, in cell order."""
    return {name: encoder.embed_images([i.image for c in cells for i in c.images]) for name, cells in by_set.items()}


def score(inputs: RunInputs, settings: EvalSettings, variants: list[Variant], sets: dict[str, list],
          by_set: dict[str, list], encoders: dict, train: dict[str, np.ndarray], faces=None,
          notes: list[str] | None = None) -> tuple[dict[str, dict[str, float]], list[dict]]:
    """{variant key: {metric: value}} and the flagged (memorised) pairs; what could not be scored goes to
    ``notes``."""
    notes = notes if notes is not None else []
    k = settings.images_per_prompt
    image_rows = {kind: _embed_cells(enc, by_set) for kind, enc in encoders.items() if enc is not None}
    text_rows = {}
    if encoders.get("clip") is not None:
        text_rows = {name: encoders["clip"].embed_texts([s.prompt for s, _ in prompts]) for name, prompts in sets.items()}
    sim_kind = "dino" if "dino" in image_rows else "clip" if "clip" in image_rows else None
    face_rows = faces.embed_cells(by_set) if faces is not None else {}
    scored: dict[str, dict[str, float]] = {}
    flagged: list[dict] = []
    nv = len(variants)
    content = [s for s in sets if s != "preservation"]
    faceless: list[str] = []
    for vi, v in enumerate(variants):
        m: dict[str, float] = {}

        def rows(kind, name, vi=vi):  # this variant's rows of one set: cells are prompt-major, variant-minor
            n_prompts = len(sets[name])
            idx = [(p * nv + vi) * k + j for p in range(n_prompts) for j in range(k)]
            return image_rows[kind][name][idx]

        for name in content:
            if "clip" in image_rows:
                texts = np.repeat(text_rows[name], k, axis=0)
                m[f"clip_score_{name}"] = float(M.clip_score(rows("clip", name), texts).mean())
        for kind in image_rows:
            gen = np.concatenate([rows(kind, n) for n in content]) if content else np.zeros((0, 1))
            if len(gen) and len(train.get(kind, [])):
                m[f"fidelity_{kind}"] = M.nearest_similarity(gen, train[kind])
                m[f"centroid_distance_{kind}"] = M.centroid_distance(gen, train[kind])
        if sim_kind and k > 1:
            per_prompt = [M.vendi_score(rows(sim_kind, n)[p * k:(p + 1) * k]) for n in content
                          for p in range(len(sets[n]))]
            if per_prompt:
                m["vendi"] = float(np.mean(per_prompt))
        if sim_kind and "preservation" in sets and vi > 0:
            m["preservation"] = M.preservation(rows(sim_kind, "preservation"), rows_of_base(image_rows, sim_kind,
                                                                                         sets, nv, k))
        elif "preservation" in sets and vi == 0 and sim_kind:
            m["preservation"] = 1.0
        if sim_kind and len(train.get(sim_kind, [])):
            count = 0
            for name in content:
                cells = [c for c in by_set[name] if c.column == vi]
                gen = rows(sim_kind, name)
                for g, t, sim in M.memorised(gen, train[sim_kind], settings.memorisation_threshold):
                    cell, j = cells[g // k], g % k
                    flagged.append({"variant": v.key, "checkpoint": v.checkpoint, "strength": v.strength, "set": name,
                                    "prompt": cell.settings.prompt, "generated": str(cell.files[j]),
                                    "training": str(train["paths"][t]), "similarity": round(sim, 4),
                                    "encoder": sim_kind})
                    count += 1
            m["memorised"] = float(count)
        if face_rows:
            gen_faces = [f for n in content for c in by_set[n] if c.column == vi for f in face_rows[n].get(id(c), [])]
            if gen_faces and len(train.get("faces", [])):
                m["face_likeness"] = M.face_likeness(np.stack(gen_faces), train["faces"])
            else:
                faceless.append(v.key)
        scored[v.key] = m
    if faceless:
        notes.append(f"face likeness: no face found in the images of {', '.join(faceless)}")
    return scored, flagged


def rows_of_base(image_rows, kind, sets, nv, k):
    n_prompts = len(sets["preservation"])
    return image_rows[kind]["preservation"][[(p * nv) * k + j for p in range(n_prompts) for j in range(k)]]


def embed_training_set(inputs: RunInputs, ws: Workspace, encoders: dict, progress: bool) -> dict:
    """Training-set rows per encoder, cached by image content (``helpers.dataset.embeddings``): a dataset version
    is embedded once per encoder."""
    from helpers.dataset.embeddings import embed_image_files
    from helpers.dataset.files import dataset_entries

    paths = [e.path for e in dataset_entries(inputs.dataset)[0]]
    out: dict = {"paths": paths}
    for kind, enc in encoders.items():
        if enc is not None:
            emb = embed_image_files(enc, paths, ws.cache / "embeddings", progress=progress)
            out[kind] = emb.vectors
            out["paths"] = emb.paths
    return out


def evaluate_run(workspace, run_name: str, settings: EvalSettings | None = None, *, lora=None, progress=None,
                 allow_changed_dataset: bool = False, echo=print) -> Evaluation:
    """Evaluate a run (see the module docstring); returns the :class:`Evaluation`. Bad input raises
    ``EvaluationError`` before any model is loaded; an encoder that cannot be had is a note, not a stop."""
    from helpers.evaluation.choose import recommend, write_charts
    from helpers.evaluation.report import write_report
    from helpers.generation.sources import model_size_rules

    t0 = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace, create=False)
    settings = settings or EvalSettings()
    show = True if progress is None else bool(progress)
    inputs = read_inputs(ws, run_name, settings, lora, allow_changed_dataset)
    variants, notes = plan_variants(inputs, settings)
    notes = inputs.notes + notes
    if not inputs.triggers and "trigger" in settings.prompt_sets:
        notes.append("no trigger words (none given, no trigger check saved for the dataset): the 'trigger' set "
                     "is skipped and new prompts carry no trigger")
    native, multiple = model_size_rules(inputs.base)
    sets = prompt_sets(inputs, settings, settings.width or native, multiple)
    folder = inputs.run.root / EVAL_DIR
    _prepare_folder(folder, settings.overwrite)
    echo(f"evaluating {run_name}: {len(variants)} variants × {sum(len(p) for p in sets.values())} prompts × "
         f"{settings.images_per_prompt} images")
    by_set = generate(inputs, settings, variants, sets, folder, show)
    encoders = {"clip": _open_encoder(ENCODER_NAMES[settings.encoder], settings.encoder_path, ws, settings.device,
                                      notes, "text alignment and CLIP image similarity")}
    if settings.dino:
        from helpers.models.encoders import DEFAULT_DINO

        encoders["dino"] = _open_encoder(DEFAULT_DINO, settings.dino_path, ws, settings.device, notes,
                                         "DINOv2 image similarity")
    train = embed_training_set(inputs, ws, encoders, show)
    faces = None
    if settings.faces != "off":
        from helpers.evaluation.face_metric import open_faces

        faces = open_faces(ws, settings, train, notes)
    scored, flagged = score(inputs, settings, variants, sets, by_set, encoders, train, faces, notes)
    table = {(v.checkpoint, v.strength): scored[v.key] for v in variants}
    for ck in inputs.checkpoints:  # strength 0 of every checkpoint is the base model
        if 0.0 in [float(s) for s in settings.strengths]:
            table[(ck.label, 0.0)] = scored["base"]
    recommendation = recommend(variants, scored, settings)
    charts = write_charts(folder / "charts", inputs.checkpoints, variants, scored)
    record = {"run": run_name, "time": time.time(), "base_model": str(inputs.base), "dataset": str(inputs.dataset),
              "triggers": inputs.triggers, "settings": _settings_dict(settings),
              "checkpoints": [{"label": c.label, "file": str(c.path), "epoch": c.epoch, "step": c.step,
                               "lora": str(c.lora) if c.lora else None} for c in inputs.checkpoints],
              "variants": [{**v.__dict__, "key": v.key, "metrics": scored[v.key]} for v in variants],
              "prompts": {n: [s.prompt for s, _ in p] for n, p in sets.items()},
              "images": {n: [[str(f) for f in c.files] for c in cells] for n, cells in by_set.items()},
              "flagged": flagged, "notes": notes,
              "recommendation": recommendation.__dict__ if recommendation else None}
    metrics_path = write_text_atomic(folder / "metrics.json", json.dumps(record, indent=1, default=str))
    grids = {n: sorted((folder / "grids" / n).glob("grid*.png")) for n in sets}
    evaluation = Evaluation(run_name, folder, folder / "report.html", metrics_path, table, recommendation, flagged,
                            notes, charts, grids, time.perf_counter() - t0)
    write_report(evaluation, inputs, variants, sets, settings)
    evaluation.seconds = time.perf_counter() - t0
    return evaluation


def _settings_dict(settings: EvalSettings) -> dict:
    from helpers.config import to_dict

    return to_dict(settings)


def load_evaluation(workspace, run_name: str) -> dict:
    """The ``metrics.json`` of a run's last evaluation."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace, create=False)
    path = ws.run(run_name).root / EVAL_DIR / "metrics.json"
    if not path.is_file():
        raise EvaluationError(f"run {run_name} has no evaluation yet ({path}): evaluate it first (notebook 06, or "
                              f"`python -m helpers.evaluation run {run_name}`)")
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = ["Checkpoint", "EVAL_DIR", "Evaluation", "Recommendation", "Variant", "evaluate_run", "load_evaluation"]
