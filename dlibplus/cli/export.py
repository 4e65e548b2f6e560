"""``dlibplus export``: write dlib's face network, or a fine-tuned one, as ONNX."""
from __future__ import annotations

from pathlib import Path

import click


class BadInput(click.ClickException):
    """One line (``Error: ...``) and exit status 2: a model or output the user named is unusable."""

    exit_code = 2


@click.command("export")
@click.argument("model")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .onnx file to write (replaced atomically).")
@click.option("--input", "input_kind", type=click.Choice(["uint8", "float"]), default="uint8", show_default=True,
              help="Input tensor: uint8 pixels, or float32 pixel values 0-255; (N, 150, 150, 3) RGB either way.")
@click.option("--opset", type=click.IntRange(11), default=17, show_default=True, help="ONNX opset version.")
def export(model, output, input_kind, opset):
    """Write MODEL as ONNX: dlib, torch (both dlib's own network), a .dat file or a `dlibplus finetune`
    folder, optionally followed by +flip (each face averaged with its mirror image, inside the graph).

    The graph takes aligned face chips (N, 150, 150, 3) RGB, as dlib.get_face_chip(image, shape, 150,
    0.25) makes them, and returns (N, 128) float32 descriptors (distance <= 0.6: same person). A
    fine-tuned model keeps its calibration; its metadata.json goes into the ONNX metadata properties.
    """
    from ..errors import DlibplusError
    from ..export import export_onnx

    try:
        path = export_onnx(model, output, input=input_kind, opset=opset)
    except DlibplusError as exc:
        raise BadInput(str(exc)) from None
    click.echo(f"{model} written to {path} (input {input_kind} (N, 150, 150, 3) RGB, output (N, 128) "
               f"float32, opset {opset})", err=True)
