"""The shape of ``helpers/``: imports point one way and nothing imports in a circle.

Every import counts, also those inside functions (a function-level import that closes a cycle is still a
cycle, only hidden). Two rules:

- no cycle between modules;
- a stage imports only stages of lower layers, never one of its own layer or a later one. Layers, lowest
  first: the spine (config, changes, workspace, environment, hub, templates, ui, and the rented-box modules
  ledger, cleanup, results, instance: these may use each other)
  < models (model files, encoders) < dataset (training images on disk; its advice uses encoders) < download, captioning (data in) < lora (LoRA files) < generation
  (images from any of them) < training (saves LoRAs, draws samples) < runner (training as a detached job)
  < ui.monitor (its live view) < evaluation < demo, the top-level CLI and the ``helpers.captions`` alias.
"""

from __future__ import annotations

import ast
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
LAYERS = [
    {"config", "changes", "workspace", "environment", "hub", "templates", "ui", "ledger", "cleanup", "results",
     "instance"},
    {"models"},
    {"dataset"},
    {"download", "captioning"},
    {"lora"},
    {"generation"},
    {"training"},
    {"runner"},
    {"ui.monitor"},
    {"evaluation"},
    {"demo", "__main__", "captions"},
]
SPINE, TOP = 0, len(LAYERS) - 1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(HELPERS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: helpers modules it imports anywhere in its code}."""
    modules = {module_name(p): p for p in HELPERS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                found = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            targets |= {t for t in found if t in modules and t not in (name, "helpers")}
        graph[name] = targets
    return graph


def stage_of(module: str) -> str:
    """``helpers.dataset.files`` -> ``dataset``; modules named in LAYERS by their own path (``ui.monitor``) win."""
    parts = module.split(".")[1:]
    for n in range(len(parts), 0, -1):
        if any(".".join(parts[:n]) in layer for layer in LAYERS):
            return ".".join(parts[:n])
    return parts[0] if parts else "__init__"


def layer_of(stage: str) -> int:
    for i, layer in enumerate(LAYERS):
        if stage in layer:
            return i
    raise AssertionError(f"helpers.{stage} is in no layer: add it to LAYERS in {__file__} (and the README)")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read():
    graph = import_graph()
    assert "helpers.dataset.files" in graph["helpers.training.data"]
    assert "helpers.changes" in graph["helpers.dataset.fix"]


def test_no_import_cycles():
    graph = {m: {t for t in targets if not (m.startswith(t + ".") or t == m)} for m, targets in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_stages_import_only_lower_layers():
    wrong = []
    for module, targets in import_graph().items():
        for target in targets:
            a, b = stage_of(module), stage_of(target)
            if a == b or layer_of(a) == layer_of(b) in (SPINE, TOP):
                continue
            if layer_of(b) >= layer_of(a):
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways between stages:\n  " + "\n  ".join(sorted(wrong))


def test_no_module_is_too_long():
    long = {module_name(p): n for p in HELPERS.rglob("*.py") if (n := p.read_text().count("\n")) > 600}
    assert not long, f"modules over 600 lines (split them): {long}"


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
