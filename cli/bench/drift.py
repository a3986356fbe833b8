"""``exitwise bench drift BUNDLE``: realised cost per image when traffic drifts, control off/on."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from exitwise.errors import ExitwiseError


def register(app: typer.Typer) -> None:
    app.command("drift")(bench_drift)


def bench_drift(
    bundle: Path = typer.Argument(..., help="A calibrated bundle."),
    shifts: str = typer.Option(
        "noise,blur,dim,rotate,digits", help="Comma list of shifts to stream (served runs)."
    ),
    sequence: str = typer.Option(
        "noise,dim",
        help="Shifts one server lives through in turn, before the whole clean test split "
        "('' for none).",
    ),
    simulate: bool = typer.Option(
        True, "--simulate/--no-simulate", help="Replay recorded confidences over many seeds."
    ),
    sim_shifts: str = typer.Option(
        "noise,noise-mild,blur,blur-mild,dim,dim-mild,rotate,rotate-mild,digits",
        help="Shifts of the simulation.",
    ),
    seeds: int = typer.Option(
        50,
        min=1,
        help="Streams per simulated scenario (a p90 of 20 streams moves by about 0.4 points "
        "between runs; 50 settle it).",
    ),
    clean_images: int = typer.Option(
        100_000, min=1000, help="Images of each simulated clean stream (moves counted)."
    ),
    clean: int = typer.Option(2000, min=1, help="Clean images before the shift."),
    shifted: int = typer.Option(6000, min=1, help="Shifted images."),
    after: int = typer.Option(2000, min=1, help="Clean images after the shift."),
    settle: int = typer.Option(2000, min=0, help="Shifted images the loop gets to settle."),
    window: int | None = typer.Option(None, help="Budget control window [the server's]."),
    tolerance: float | None = typer.Option(None, help="Budget control tolerance [server's]."),
    data_root: Path | None = typer.Option(None, help="Where the bundle's data set lives."),
    threads: int | None = typer.Option(None, help="torch intra-op threads (default: as serve)."),
    seed: int = typer.Option(0, help="Seed of the streams and shifts."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the results as JSON."),
    markdown_out: Path | None = typer.Option(None, "--markdown", help="Write a markdown table."),
    figure: Path | None = typer.Option(None, "--figure", help="Write the PNG figure here."),
) -> None:
    """Stream clean, then shifted, then clean test images through the server's data plane at
    every operating point, with budget control off and on (no HTTP); one server through a
    sequence of shifts; and the controller replayed over recorded confidences for many seeds."""
    import numpy as np
    import torch

    from benchmarks.drift import (
        markdown,
        plot,
        run_drift,
        run_sequence,
        sequence_markdown,
        summarise,
    )
    from benchmarks.drift_sim import markdown as sim_markdown
    from benchmarks.machine import describe_machine
    from exitwise.bundle import load_bundle
    from exitwise.datasets import EvalImages, open_dataset
    from exitwise.fileio import atomic_write_json, atomic_write_text
    from serving.threads import default_torch_threads

    chosen = _shifts("--shifts", shifts)
    in_turn = _shifts("--sequence", sequence, empty=True)
    simulated = _shifts("--sim-shifts", sim_shifts)
    b = load_bundle(bundle)
    if not b.has_calibration:
        raise ExitwiseError(f"{bundle} is not calibrated: run `exitwise calibrate` first")
    m = b.manifest
    if m.dataset is None:
        raise ExitwiseError(f"{bundle}: the manifest names no data set to draw test images from")
    torch.set_num_threads(threads or default_torch_threads(workers=1))
    view = EvalImages(open_dataset(m.dataset, "test", data_root, source=m.folder), m.preprocessing)
    pixels = np.stack([view[i][0].numpy() for i in range(len(view))])
    labels = np.asarray(view.labels)
    # Budget control alone: no stepping down to cheaper points when the machine is busy.
    overrides: dict[str, object] = {"log_level": "warning", "degrade": False}
    if window is not None:
        overrides["budget_control_window"] = window
    if tolerance is not None:
        overrides["budget_control_tolerance"] = tolerance
    try:
        runs = run_drift(
            bundle,
            pixels,
            labels,
            m.preprocessing,
            shifts=chosen,
            sizes=(clean, shifted, after),
            settings_overrides=overrides,
            seed=seed,
            say=lambda line: typer.echo(line, err=True),
        )
    except ValueError as err:
        raise ExitwiseError(f"invalid option: {str(err).splitlines()[-1].strip()}") from None
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    rows = summarise(runs, settle)
    table = markdown(rows, settle)
    in_sequence = []
    if in_turn:
        in_sequence = run_sequence(
            bundle, pixels, m.preprocessing, shifts=in_turn, settings_overrides=overrides,
            seed=seed, say=say,
        )  # fmt: skip
        table += "\n\nOne server through a sequence (control on):\n\n" + sequence_markdown(
            in_sequence
        )
    simulation = None
    if simulate:
        simulation = _simulate(b, m, data_root, simulated, in_turn, seeds, clean_images, say)
        table += "\n\nSimulation:\n\n" + sim_markdown(simulation)
    on = [r for r in runs if r.control]
    control_s = sum(r.control_seconds for r in on)
    compute_s = sum(r.compute_seconds for r in on)
    images = sum(len(r.costs) for r in on)
    cost = (
        f"Budget control's cost with control on: {1e6 * control_s / max(1, images):.2f} us per "
        f"image, {100 * control_s / compute_s:.2f} % of the engine's compute time."
        if compute_s
        else ""
    )
    table = f"{table}\n\n{cost}" if cost else table
    typer.echo(table)
    if json_out is not None:
        atomic_write_json(
            json_out,
            {
                "command": "exitwise " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                "machine": describe_machine(),
                "bundle": {"name": b.name, "preset": m.preset, "exit_mflops": m.exit_mflops},
                "phases": {"clean": clean, "shifted": shifted, "after": after, "settle": settle},
                "rows": rows,
                "sequence": in_sequence,
                "simulation": simulation,
                "runs": [
                    {
                        "shift": r.shift,
                        "point": r.point,
                        "control": r.control,
                        "seconds": r.seconds,
                        "moves": r.moves,
                        "final_budget": r.final_budget,
                        "control_seconds": r.control_seconds,
                        "compute_seconds": r.compute_seconds,
                    }
                    for r in runs
                ],
            },
        )
    if markdown_out is not None:
        atomic_write_text(markdown_out, table + "\n")
    if figure is not None:
        plot(runs, figure)


def _shifts(flag: str, text: str, empty: bool = False) -> list[str]:
    from benchmarks.shifts import SHIFTS

    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SHIFTS]
    if (not chosen and not empty) or unknown:
        raise ExitwiseError(f"{flag}: choose from {', '.join(SHIFTS)} (got {text!r})")
    return chosen


def _simulate(
    bundle: Any,
    manifest: Any,
    data_root: Path | None,
    shifts: list[str],
    sequence: list[str],
    seeds: int,
    clean_images: int,
    say: Any,
) -> dict[str, Any]:
    """Record every exit's confidence on the held-out split, the test split and the test split
    under each shift, then replay them (benchmarks.drift_sim)."""
    import numpy as np
    import torch

    from benchmarks.drift_sim import Simulator, confidences, simulate
    from benchmarks.shifts import SHIFTS
    from calibration.data import open_splits
    from exitwise.preprocess import normalize
    from exitwise.runtime import load_torch_runner

    runner = load_torch_runner(bundle, torch.device("cpu"))
    spec = manifest.preprocessing
    splits = {s.name: s.view for s in open_splits(bundle, data_root)}

    def pixels(view: Any) -> np.ndarray:
        return np.stack([view[i][0].numpy() for i in range(len(view))])

    def record(px: np.ndarray) -> np.ndarray:
        return confidences(runner, normalize(torch.from_numpy(px), spec))

    test = pixels(splits["test"])
    traffic = {"heldout": record(pixels(splits["heldout"])), "test": record(test)}
    rng = np.random.default_rng(0)
    for name in dict.fromkeys([*shifts, *sequence]):
        say(f"recording the network's confidences under {name}")
        traffic[name] = record(SHIFTS[name](test.copy(), rng))
    calibration = bundle.calibration()
    if not calibration.control:
        raise ExitwiseError("the bundle's calibration has no control table: re-run calibrate")
    points = sorted(calibration.operating_points, key=lambda p: p.expected_mflops)
    sim = Simulator(calibration, traffic)
    return simulate(sim, points, shifts, sequence, seeds, clean_images, say)
