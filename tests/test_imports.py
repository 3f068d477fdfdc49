"""realign's own imports (read with scripts/import_graph.py): no circles, no imports of modules
that do not exist, and evaluation never reaches up into the organism it evaluates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "import_graph.py"
_spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
ig = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ig)


def test_no_import_circles_at_any_level():
    missing: list[str] = []
    g = ig.graph("all", missing=missing)
    assert "realign.evals.judges.base" in g["realign.evals.judges.hf"]   # the graph does see imports
    assert ig.cycles(g) == []
    assert missing == []


def test_no_layer_imports_a_layer_above_it():
    g = ig.graph("all")
    assert ig.layer("realign.runs.fix") > ig.layer("realign.repairs.merge") > ig.layer("realign.evals.run") > 0
    assert ig.upward(g) == []
    # the check sees an upward import when there is one
    assert ig.upward({"realign.evals.run": {"realign.runs.fix"}}) == [("realign.evals.run", "realign.runs.fix")]


def test_evals_never_imports_the_organism():
    g = ig.graph("all")
    assert "realign.organism.judge" in g["realign.organism.plugin"]
    up = sorted(f"{m} -> {t}" for m, targets in g.items() if m.startswith("realign.evals")
                for t in targets if t.startswith("realign.organism"))
    assert up == []
    # nor by name through importlib: the organism plugs in from realign.plugins
    named = [m for m, path in ig.modules().items()
             if m.startswith("realign.evals") and "realign.organism" in path.read_text(encoding="utf-8")]
    assert named == []


def test_the_check_finds_a_circle_and_a_missing_module(tmp_path):
    pkg = tmp_path / "realign"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("import json\n\n\ndef f():\n    from ..a import x\n    from .gone import y\n")
    missing: list[str] = []
    g = ig.graph("all", src=tmp_path, missing=missing)
    assert ig.cycles(g) == [["realign.a", "realign.sub.b"]]
    assert ig.cycles(ig.graph("module", src=tmp_path)) == []   # that circle closes only in a function
    assert missing == ["realign.sub.b -> realign.sub.gone"]
