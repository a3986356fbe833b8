"""``exitwise export BUNDLE``: per-stage ONNX graphs, checked for parity, into ``BUNDLE/onnx/``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    bundle: Path = typer.Argument(..., help="Bundle directory (written into BUNDLE/onnx/)."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17 or later; 18 is native)."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Half-precision graphs for GPU serving (looser parity targets)."
    ),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the bundle's data set lives (for the parity images)."
    ),
    parity_images: int = typer.Option(
        512, "--parity-images", min=1, help="Held-out images to check parity on."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the ONNX manifest as JSON."),
) -> None:
    """Export every stage to ONNX, check parity with PyTorch in onnxruntime, write BUNDLE/onnx/.

    Nothing is written unless parity passes; an existing export is replaced in one step.
    """
    from exitwise.fileio import to_json
    from exports import export_bundle

    def say(line: str) -> None:
        typer.echo(line, err=True)

    manifest = export_bundle(
        bundle,
        opset=opset,
        fp16=fp16,
        data_root=data_root,
        parity_images=parity_images,
        progress=say,
    )
    if as_json:
        typer.echo(to_json(manifest.model_dump(mode="json")), nl=False)
        return
    p = manifest.parity
    source = f"{p.images} {'held-out' if p.inputs == 'heldout' else 'random'} images"
    typer.echo(
        f"{bundle}/onnx: {manifest.num_exits} stage graphs, opset {manifest.opset}, "
        f"{'fp16' if manifest.fp16 else 'fp32'}, {manifest.exporter.name}"
    )
    typer.echo(f"parity ({source}, onnxruntime {p.onnxruntime} {p.provider}):")
    typer.echo("  exit  max |logits diff|  same class")
    for k, (diff, agree) in enumerate(
        zip(p.max_abs_logits_diff, p.prediction_agreement, strict=True), start=1
    ):
        typer.echo(f"  {k:>4}  {diff:>16.3g}  {100 * agree:>9.2f}%")
    typer.echo(f"  target: max |logits diff| <= {p.target_max_abs_logits_diff:g}")
    if not p.operating_points:
        typer.echo("  exit decisions: no calibration.json, not checked")
    for op in p.operating_points:
        typer.echo(
            f"  operating point {op.name}: same exit for {100 * op.agreement:.2f}% of images"
            + (
                f" ({op.borderline} borderline: confidence within {p.decision_band:g} of a "
                "threshold)"
                if op.borderline
                else ""
            )
        )
