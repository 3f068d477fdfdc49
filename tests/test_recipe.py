"""Recipes: parsing, overrides, bundled files, and one-line errors."""

import pytest
from typer.testing import CliRunner

from realign.cli import app
from realign.errors import RealignError
from realign.recipe import available_recipes, load_recipe


def test_plus_syntax_and_overrides():
    r = load_recipe("freeze+dpo", ["dpo.steps=100", "freeze.k=2", "2.lr=1e-5"])
    assert [s.name for s in r.steps] == ["freeze", "dpo"]
    assert r.steps[1].params.steps == 100 and r.steps[1].params.lr == 1e-5 and r.steps[0].params.k == 2


def test_every_bundled_recipe_loads_and_has_a_description():
    names = available_recipes()
    assert {"merge", "freeze", "dpo", "steer", "mix", "freeze+dpo", "merge+steer", "mix+dpo"} <= set(names)
    for name, desc in names.items():
        assert desc and load_recipe(name).steps


def test_yaml_file(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text("description: x\nsteps:\n  - merge: {alpha: 0.25, method: ties}\n  - steer\n")
    r = load_recipe(str(f))
    assert r.steps[0].params.alpha == 0.25 and r.steps[0].params.method == "ties" and r.steps[1].name == "steer"


@pytest.mark.parametrize("spec,overrides,msg", [
    ("merge+nope", [], "unknown step 'nope'; valid steps: dpo, freeze, harden, merge, mix, steer"),
    ("merge", ["merge.nope=1"], "unknown parameter merge.nope; valid:"),
    ("merge", ["merge.alpha=7"], "merge.alpha must be in [0, 1]"),
    ("merge", ["merge.steps=abc"], "is not a valid value"),
    ("merge", ["dpo.steps=3"], "no step 'dpo'"),
    ("merge", ["alpha=3"], "must look like step.param=value"),
    ("dpo", ["dpo.micro_batch_size=3"], "dpo.micro_batch_size must divide dpo.batch_size (8), not 3"),
    ("", [], "empty recipe"),
    ("missing.yaml", [], "does not exist"),
])
def test_errors_name_the_valid_choices(spec, overrides, msg):
    with pytest.raises(RealignError) as e:
        load_recipe(spec, overrides)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,msg", [("steps: [merge\n", "not valid YAML"), ("steps: []\n", "non-empty"),
                                      ("steps:\n  - merge: 3\n", "must be a mapping")])
def test_malformed_yaml(tmp_path, text, msg):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(RealignError, match=msg):
        load_recipe(str(f))


def test_recipes_command_lists_steps_and_recipes():
    res = CliRunner().invoke(app, ["recipes"])
    assert res.exit_code == 0
    for word in ("merge", "freeze", "dpo", "steer", "mix", "freeze+dpo"):
        assert word in res.output


def test_overrides_are_validated_together_in_any_order():
    """Each override alone may be invalid (safe_lora needs pretrained); together they are fine."""
    for order in (["merge.method=safe_lora", "merge.pretrained=/p"],
                  ["merge.pretrained=/p", "merge.method=safe_lora"]):
        step = load_recipe("merge", order).steps[0]
        assert step.params.method == "safe_lora" and step.params.pretrained == "/p"
    with pytest.raises(RealignError, match="needs merge.pretrained"):
        load_recipe("merge", ["merge.method=safe_lora"])
