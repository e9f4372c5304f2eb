"""What every command module of the command line shares: the app, the data sub-app, common options, output."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Knowledge-distillation anomaly detection: data, training, evaluation and prediction.")
data_app = typer.Typer(no_args_is_help=True, help="Create and inspect datasets.")
app.add_typer(data_app, name="data", help="Create and inspect datasets (synthetic data, layout check).")

DEVICE = typer.Option("auto", "--device", help="auto, cpu or cuda[:N].")
BATCH = typer.Option(16, "--batch-size", min=1, help="Images per forward pass.")


def _echo(text: str) -> None:
    typer.echo(text)


def _show_version(value: bool) -> None:
    if value:
        from edgekd import __version__
        typer.echo(f"edgekd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                       help="Print edgekd's version and exit.")) -> None:
    """Knowledge-distillation anomaly detection: data, training, evaluation and prediction."""



ARTIFACT_HELP = "A model.ckpt, an exported .onnx or a TensorRT .engine (backend picked from the file type)."
BACKEND = typer.Option(None, "--backend", help="Force torch, onnxruntime or tensorrt.")

