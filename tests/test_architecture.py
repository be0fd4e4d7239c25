"""The house's rules, read from the code itself: stages import only downward, no cycles, no private names
across modules, every file within its line budget (docs/ARCHITECTURE.md draws the same layers)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "genoembed"

# Layer of every module (lower imports nothing above it). A module may import its own layer's
# modules only where listed in SIDEWAYS, so the order inside a layer is still one way.
LAYERS = [
    ["errors", "version"],
    ["files", "names", "leases", "interrupts"],
    ["schema", "resources", "seqio", "synthetic"],
    ["topology", "gff_sql", "genes"],
    ["fasta_scan"],
    ["genome", "gff", "embedders.base", "embedders.tokenize", "embedders.fingerprint", "embedders.model_dir", "feature_index",
     "vector_index"],
    ["tiles", "features", "joins", "recall", "subset_search", "embedders.kmer", "embedders.pooling", "embedders.fused",
     "embedders.families",
     "embedders.table", "embedders.translated", "embedders.loading"],
    ["embedders.hf", "embedders.protein", "evidence", "regions", "cds"],
    ["protein_evidence", "hit_formats"],
    ["embedders"],
    ["manifest_checks"],
    ["manifest"],
    ["writers"],
    ["store"],
    ["store_writer", "sql", "indexing", "saved_searches", "subsets", "seeds", "significance"],
    ["annotate", "search", "remove", "circularise", "verify", "recipe", "plot", "tracks", "variants", "explain",
     "query_aliases", "gene_query"],
    ["chain"],
    ["mapping"],
    ["ray_engine"],
    ["engine"],
    ["build"],
    ["train.loop", "train.corpus", "eval.truth"],
    ["train.pretrain", "eval.metrics"],
    ["eval.run"],
    ["eval.families", "eval.protein"],
    ["eval"],
    ["train.pairs", "train.surgery"],
    ["train.finetune", "train.protein"],
    ["train.homolog_data"],
    ["train.homolog"],
    ["train"],
    ["__init__"],
    ["serve_limits"],
    ["serve_formats"],
    ["serve"],
    ["cli.common"],
    ["cli.annotate", "cli.compact", "cli.eval", "cli.finetune", "cli.index", "cli.info", "cli.plot", "cli.pretrain",
     "cli.remove", "cli.search", "cli.serve", "cli.sql", "cli.track", "cli.verify", "cli.variants", "cli.explain"],
    ["cli"],
    ["__main__"],
]
# Same-layer imports that are allowed (each one way only).
SIDEWAYS = {("remove", "indexing"), ("annotate", "sql"), ("plot", "sql"), ("verify", "sql"),
            ("remove", "store_writer"), ("features", "tiles"),
            ("variants", "search"), ("explain", "search"), ("subsets", "sql"),
            ("circularise", "remove")}
# Most lines a module may have, unless tests/file_budget.json lists it (with a maximum that only goes down).
MAX_LINES = 500
BUDGET_FILE = Path(__file__).resolve().parent / "file_budget.json"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported genoembed module, names taken from it) for every import in the file, lazy ones too."""
    known, found = modules(), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("genoembed"):
            package = node.module[len("genoembed."):] if node.module != "genoembed" else "__init__"
            for alias in node.names:
                submodule = f"{package}.{alias.name}" if package != "__init__" else alias.name
                found.append((submodule, []) if submodule in known else (package, [alias.name]))
        elif isinstance(node, ast.Import):
            found += [(alias.name[len("genoembed."):], []) for alias in node.names
                      if alias.name.startswith("genoembed.")]
    return found


def layer_of(name: str) -> int:
    for number, layer in enumerate(LAYERS):
        if name in layer:
            return number
    raise AssertionError(f"module genoembed.{name} has no layer in tests/test_architecture.py (add it)")


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_imports_run_only_downward():
    upward = []
    for name, path in modules().items():
        for target, _names in imports(path):
            if target == name or target == "__init__" and name != "__init__":
                continue
            if layer_of(target) > layer_of(name) or \
                    (layer_of(target) == layer_of(name) and (name, target) not in SIDEWAYS):
                upward.append(f"genoembed.{name} -> genoembed.{target}")
    assert upward == [], "imports that do not run downward:\n" + "\n".join(upward)


def test_no_import_cycles():
    graph = {name: {t for t, _ in imports(path) if t in modules() and t != name} for name, path in modules().items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(target):] + [node, target]))
            if state.get(target) is None:
                visit(target, trail + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_no_private_names_cross_modules():
    crossing = [f"genoembed.{name} takes {imported} from genoembed.{target}"
                for name, path in modules().items() for target, names in imports(path)
                for imported in names if imported.startswith("_") and not imported.startswith("__")]
    assert crossing == []


def line_count(path: Path) -> int:
    return path.read_text().count("\n")


def test_files_keep_within_the_line_budget():
    """A module is at most MAX_LINES long, or at most its entry in tests/file_budget.json: files written before
    the budget, each to be split along its concerns. An entry only goes down: when its file shrinks the entry
    must follow (so the room is not spent again), and a file back under MAX_LINES leaves the list."""
    budget = json.loads(BUDGET_FILE.read_text())
    found = {str(path.relative_to(PACKAGE.parent)): line_count(path) for path in PACKAGE.rglob("*.py")}
    problems = [f"{name}: {lines} lines > {budget.get(name, MAX_LINES)} (split it along its concerns)"
                for name, lines in sorted(found.items()) if lines > budget.get(name, MAX_LINES)]
    problems += [f"{name}: listed at {limit} in {BUDGET_FILE.name} but is {found.get(name, 0)} lines; "
                 + (f"lower its entry to {found[name]}" if found.get(name, 0) > MAX_LINES else "remove its entry")
                 for name, limit in sorted(budget.items()) if found.get(name, 0) < limit]
    assert problems == []


def test_the_public_api_is_documented():
    import genoembed

    for name in genoembed.__all__:
        if name.startswith("__"):
            continue
        assert getattr(genoembed, name).__doc__, f"genoembed.{name} has no docstring"
