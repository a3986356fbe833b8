"""Recipes: the shipped configs, ``--set`` overrides, one-line errors, resume compatibility."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import Recipe, RecipeError
from training.recipe_io import build_recipe, check_resume_compatible, load_recipe, parse_override

from ..training_helpers import one_thread  # noqa: F401  (autouse: one thread)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MINIMAL = {
    "model": {"preset": "msdnet-fmnist"},
    "data": {"dataset": "fashion-mnist"},
    "epochs": 2,
    "batch_size": 64,
}


@pytest.mark.parametrize(
    "name",
    [
        "demo",
        "fmnist",
        "fmnist-rgb-bench",
        "fmnist-rgb-paper",
        "cifar10",
        "cifar100",
        "imagenet-step4",
        "imagenet-step6",
        "imagenet-step7",
        "folder-example",
    ],
)
def test_shipped_configs_validate(name: str) -> None:
    recipe = load_recipe(CONFIGS / f"{name}.yaml")
    assert recipe.epochs >= 1
    # The resolved recipe round-trips through YAML.
    assert Recipe.model_validate(yaml.safe_load(recipe.to_yaml())) == recipe


def test_fmnist_rgb_recipes_build_the_cifar_network() -> None:
    from training.build import build_model
    from training.folder_data import input_preprocessing

    for name in ("fmnist-rgb-bench", "fmnist-rgb-paper"):
        recipe = load_recipe(CONFIGS / f"{name}.yaml")
        spec = input_preprocessing(recipe.data)
        assert spec.channels == 3 and spec.input_size == 32
        model = build_model(recipe, spec, [str(i) for i in range(10)])
        assert model.num_exits == 5 and model.config_dict["in_channels"] == 3
    paper = load_recipe(CONFIGS / "fmnist-rgb-paper.yaml")
    assert (paper.batch_size, paper.optim.lr, paper.meta.interval) == (1024, 0.8, 1)
    assert paper.model.init == "original"


def test_seed_hyper_parameters() -> None:
    cifar = load_recipe(CONFIGS / "cifar100.yaml")
    assert (cifar.batch_size, cifar.optim.lr, cifar.epochs) == (1024, 0.8, 300)
    assert (cifar.meta.norm, cifar.meta.epsilon, cifar.meta.interval) == ("col", 0.8, 1)
    assert cifar.seed == 1 and cifar.meta.target_p_index == 15
    imagenet = load_recipe(CONFIGS / "imagenet-step4.yaml")
    assert (imagenet.batch_size, imagenet.optim.lr, imagenet.epochs) == (4096, 0.8, 100)
    assert (imagenet.meta.norm, imagenet.meta.epsilon, imagenet.meta.interval) == ("mat", 0.3, 100)
    assert imagenet.data.resolved_heldout_size == 50000


def test_overrides_nested_and_typed() -> None:
    overrides = [
        "epochs=5",
        "optim.lr=0.05",
        "optim.milestones=[1, 2]",
        "optim.schedule=multistep",
        "model.kwargs.channels=4",
        "meta.gradient=double-backward",
        "data.train_subset=null",
        "optim.weight_decay=1e-3",  # YAML 1.1 reads this as a string; it is coerced
    ]
    r = build_recipe(MINIMAL, overrides)
    assert r.epochs == 5 and r.optim.lr == 0.05 and r.optim.milestones == [1, 2]
    assert r.model.kwargs == {"channels": 4} and r.meta.gradient == "double-backward"
    assert r.optim.weight_decay == 1e-3 and r.data.train_subset is None


def test_override_values_are_yaml() -> None:
    assert parse_override("a.b=[1,2]") == (["a", "b"], [1, 2])
    assert parse_override("name=my run") == (["name"], "my run")
    assert parse_override("x=") == (["x"], None)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("epoch=3", "unknown recipe key 'epoch'; keys in the recipe: name, model"),
        ("optim.lrr=1", "unknown recipe key 'optim.lrr'; keys in optim: lr,"),
        ("epochs.x=1", "'epochs' has no sub-keys"),
        ("epochs=abc", "--set epochs=abc: epochs: Input should be a valid integer"),
        ("optim.lr=-1", "--set optim.lr=-1: optim.lr: Input should be greater than 0"),
        ("weighting=meta", "--set weighting=meta: weighting: Input should be 'l2w' or 'uniform'"),
        ("batch_size=63", "batch_size must be even"),
        ("noequals", "expected KEY=VALUE"),
    ],
)
def test_bad_overrides_are_one_line(override: str, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        build_recipe(MINIMAL, [override], source="r.yaml")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_files_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(RecipeError, match=r"not valid YAML \(line"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(tmp_path / "list.yaml")
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump({**MINIMAL, "optim": {"nesterov": True}}))
    with pytest.raises(RecipeError, match=r"extra.yaml: unknown recipe key 'optim.nesterov'"):
        load_recipe(tmp_path / "extra.yaml")
    (tmp_path / "missing.yaml").write_text(yaml.safe_dump({"epochs": 1}))
    with pytest.raises(RecipeError, match="required recipe key 'model' is missing"):
        load_recipe(tmp_path / "missing.yaml")


def test_multistep_needs_milestones() -> None:
    with pytest.raises(RecipeError, match="needs milestones"):
        build_recipe(MINIMAL, ["optim.schedule=multistep"])
    with pytest.raises(RecipeError, match="increasing order"):
        build_recipe(MINIMAL, ["optim.milestones=[5, 2]"])


def test_resume_compatibility() -> None:
    old = build_recipe(MINIMAL).to_dict()
    changed = check_resume_compatible(
        old, build_recipe(MINIMAL, ["epochs=4", "eval.test=false"]), "ck"
    )
    assert changed == ["epochs", "eval.test"]
    with pytest.raises(RecipeError, match="ck was trained with weighting='l2w'"):
        check_resume_compatible(old, build_recipe(MINIMAL, ["weighting=uniform"]), "ck")
    with pytest.raises(RecipeError, match="model="):
        check_resume_compatible(old, build_recipe(MINIMAL, ["model.kwargs.channels=4"]), "ck")
