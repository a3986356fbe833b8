"""``exitwise presets`` and ``exitwise inspect PRESET|BUNDLE``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("presets")(presets)
    app.command("inspect")(inspect)


def presets(
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """List the architecture presets."""
    from exitwise.models import list_presets

    items = list_presets()
    if as_json:
        out = [
            {
                "name": p.name,
                "arch": p.arch,
                "input_size": p.input_size,
                "in_channels": p.in_channels,
                "num_classes": p.num_classes,
                "description": p.description,
                "kwargs": p.kwargs,
            }
            for p in items
        ]
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table(title="exitwise presets")
    for col in ("preset", "arch", "input", "classes", "description"):
        table.add_column(col)
    for p in items:
        table.add_row(
            p.name,
            p.arch,
            f"{p.in_channels}x{p.input_size}x{p.input_size}",
            str(p.num_classes),
            p.description,
        )
    Console().print(table)


def inspect(
    target: str = typer.Argument(..., help="A preset name or a bundle directory."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
    image_size: int | None = typer.Option(
        None,
        "--image-size",
        help="A preset sized for N-pixel images (the stem and scales follow N, as training on "
        "a folder data set with data.image_size N does).",
    ),
) -> None:
    """Per-exit MFLOPs (multiply-adds) and parameters, architecture and classes."""
    info = _describe(target, image_size)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    _print(info)


def _describe(target: str, image_size: int | None = None) -> dict[str, Any]:
    from exitwise.models import is_preset

    if is_preset(target):
        return _describe_preset(target, image_size)
    if Path(target).is_dir():
        if image_size is not None:
            raise ExitwiseError(
                f"--image-size applies to presets; the bundle {target} was trained for its own "
                "input size"
            )
        return _describe_bundle(Path(target))
    from exitwise.models import list_presets

    raise ExitwiseError(
        f"{target!r} is neither a preset nor a bundle directory; presets: "
        + ", ".join(p.name for p in list_presets())
    )


def _describe_preset(name: str, image_size: int | None = None) -> dict[str, Any]:
    from exitwise.flops import exit_costs
    from exitwise.models import create_model, get_preset

    preset = get_preset(name)
    size = preset.input_size if image_size is None else image_size
    try:
        model = create_model(name) if image_size is None else create_model(name, input_size=size)
    except ValueError as err:
        raise ExitwiseError(f"{name} at --image-size {image_size}: {err}") from None
    costs = exit_costs(model, size, preset.in_channels)
    return {
        "name": name,
        "kind": "preset",
        "arch": preset.arch,
        "arch_kwargs": model.config_dict,
        "input": {"channels": preset.in_channels, "size": size},
        "num_classes": preset.num_classes,
        "exits": [
            {"exit": c.exit, "mflops": round(c.mflops, 4), "params_m": round(c.params_m, 4)}
            for c in costs
        ],
    }


def _describe_bundle(path: Path) -> dict[str, Any]:
    from exitwise.bundle import load_bundle

    bundle = load_bundle(path)
    bundle.verify()
    m = bundle.manifest
    info: dict[str, Any] = {
        "name": m.name,
        "kind": "bundle",
        "path": str(path),
        "arch": m.arch,
        "preset": m.preset,
        "arch_kwargs": m.arch_kwargs,
        "input": {"channels": m.preprocessing.channels, "size": m.preprocessing.input_size},
        "num_classes": m.num_classes,
        "class_names": m.class_names,
        "dataset": m.dataset,
        "weights_sha256": m.weights.sha256,
        "exits": [
            {"exit": e.exit, "mflops": round(e.mflops, 4), "params_m": round(e.params_m, 4)}
            for e in m.exits
        ],
        "heldout": m.heldout.model_dump() if m.heldout else None,
        "training": m.training.model_dump(),
    }
    exit_acc = m.training.heldout_exit_accuracy
    if exit_acc is not None:
        for e, acc in zip(info["exits"], exit_acc, strict=True):
            e["heldout_accuracy"] = acc
    if bundle.has_calibration:
        cal = bundle.calibration()
        info["calibration"] = {
            "default_operating_point": cal.default_operating_point,
            "operating_points": [
                {
                    "name": p.name,
                    "target_mflops": p.target_mflops,
                    "expected_mflops": round(p.expected_mflops, 4),
                    "heldout_accuracy": p.heldout.accuracy,
                    "test_accuracy": p.test.accuracy if p.test else None,
                }
                for p in cal.operating_points
            ],
        }
    return info


def _print(info: dict[str, Any]) -> None:
    console = Console()
    inp = info["input"]
    console.print(
        f"[bold]{info['name']}[/bold] ({info['kind']}): {info['arch']}, "
        f"input {inp['channels']}x{inp['size']}x{inp['size']}, {info['num_classes']} classes"
    )
    table = Table()
    table.add_column("exit", justify="right")
    table.add_column("MFLOPs (mul-add, cumulative)", justify="right")
    table.add_column("params (M, cumulative)", justify="right")
    with_acc = any("heldout_accuracy" in e for e in info["exits"])
    if with_acc:
        table.add_column("held-out top-1 %", justify="right")
    for e in info["exits"]:
        row = [str(e["exit"]), f"{e['mflops']:.2f}", f"{e['params_m']:.3f}"]
        if with_acc:
            row.append(f"{e.get('heldout_accuracy', float('nan')):.2f}")
        table.add_row(*row)
    console.print(table)
    if info["kind"] == "bundle":
        names = info["class_names"]
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        console.print(f"classes: {shown}")
        if "calibration" in info:
            cal = Table(title="operating points")
            for col in ("name", "target MFLOPs", "expected MFLOPs", "held-out %", "test %"):
                cal.add_column(col)
            for p in info["calibration"]["operating_points"]:
                cal.add_row(
                    p["name"],
                    "-" if p["target_mflops"] is None else f"{p['target_mflops']:.2f}",
                    f"{p['expected_mflops']:.2f}",
                    f"{p['heldout_accuracy']:.2f}",
                    "-" if p["test_accuracy"] is None else f"{p['test_accuracy']:.2f}",
                )
            console.print(cal)
        else:
            console.print("not calibrated yet: run `exitwise calibrate` on this bundle")
