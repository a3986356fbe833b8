"""Reading a training recipe: YAML files and ``--set key.sub=value`` overrides validated into a
:class:`~training.config.Recipe`, errors as one line that names the key and where it came from;
and the comparison of two recipes for ``--resume``."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .config import ModelSpec, Recipe, RecipeError


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"optim.lr=0.05"`` -> (["optim", "lr"], 0.05); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE (e.g. --set epochs=1)")
    path = key.split(".")
    if any(not part for part in path):
        raise RecipeError(f"--set {item!r}: malformed key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: keep the text and let validation judge it
    return path, value


def _check_path(path: Sequence[str], item: str) -> None:
    """Refuse keys the recipe does not have (free-form only under ``model.kwargs``)."""
    cls: type[BaseModel] = Recipe
    for depth, part in enumerate(path):
        fields = cls.model_fields
        if part not in fields:
            where = ".".join(path[:depth]) or "the recipe"
            raise RecipeError(
                f"--set {item}: unknown recipe key {'.'.join(path)!r}; "
                f"keys in {where}: {', '.join(fields)}"
            )
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            cls = annotation
            continue
        if depth < len(path) - 1 and not (cls is ModelSpec and part == "kwargs"):
            raise RecipeError(f"--set {item}: {'.'.join(path[: depth + 1])!r} has no sub-keys")
        return


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        _check_path(path, item)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _describe_error(err: ValidationError, source: str, overrides: Sequence[str]) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    for item in reversed(overrides):
        key = item.partition("=")[0].strip()
        if loc == key or loc.startswith(key + "."):
            source = f"--set {item}"
            break
    if e["type"] == "extra_forbidden":
        return f"{source}: unknown recipe key {loc!r}"
    if e["type"] == "missing":
        return f"{source}: required recipe key {loc!r} is missing"
    msg = e["msg"].removeprefix("Value error, ")
    return f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"


def read_yaml(path: str | Path) -> dict[str, Any]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{file}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RecipeError(f"{file}: cannot read the recipe: {err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise RecipeError(f"{file}: not valid YAML{where}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{file}: a recipe is a YAML mapping of keys to values")
    return data


def build_recipe(
    data: dict[str, Any], overrides: Sequence[str] = (), source: str = "recipe"
) -> Recipe:
    merged = apply_overrides(data, overrides)
    try:
        return Recipe.model_validate(merged)
    except ValidationError as err:
        raise RecipeError(_describe_error(err, source, overrides)) from err


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, validate."""
    return build_recipe(read_yaml(path), overrides, source=str(path))


# Fields a resumed run must share with its checkpoint (anything else may change on --resume).
RESUME_FIXED = (
    "model",
    "data.dataset",
    "data.heldout_size",
    "data.heldout_fraction",
    "data.heldout_min",
    "data.heldout_max",
    "data.split_seed",
    "data.train_subset",
    "data.image_size",
    "data.channels",
    "data.mean",
    "data.std",
    "data.test_fraction",
    "weighting",
    "batch_size",
    "seed",
)


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None  # type: ignore[assignment]
    return d


def diff_recipes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipe dicts."""
    keys: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict) and not name.endswith("kwargs"):
            keys += diff_recipes(a, b, name + ".")
        elif a != b:
            keys.append(name)
    return keys


def check_resume_compatible(old: dict[str, Any], new: Recipe, where: str) -> list[str]:
    """Refuse a resume whose recipe changes what the checkpoint depends on; return other changes."""
    new_d = new.to_dict()
    # A recipe saved before a key existed ran with that key's default (else: compared as saved).
    with contextlib.suppress(ValidationError):
        old = Recipe.model_validate(old).to_dict()
    for key in RESUME_FIXED:
        if _get(old, key) != _get(new_d, key):
            raise RecipeError(
                f"{where} was trained with {key}={_get(old, key)!r}; the recipe now says "
                f"{_get(new_d, key)!r} (start a new run, or --overwrite)"
            )
    return diff_recipes(old, new_d)
