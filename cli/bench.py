"""``scorebank bench``: recording-cost ratios on the current device."""

from __future__ import annotations

from typing import Optional

import typer

from scorebank.cli.common import console, err_console, handle_errors, print_json
from scorebank.cli.options import CONFIG_OPTIONS, Device, JsonOutput, registry_help
from scorebank.cli.tables import compact_table
from scorebank.core.errors import InvalidArgumentError


def bench_command(
    model: str = typer.Option("cnn5", help="Model: " + registry_help("models")),
    n: int = typer.Option(10_000, help="Number of synthetic examples."),
    shape: str = typer.Option("3x32x32", help="Example shape CxHxW (default: CIFAR-10)."),
    classes: int = typer.Option(10, help="Number of classes."),
    batch_size: int = typer.Option(128, help="Batch size of every pass."),
    width: Optional[int] = typer.Option(None, help=CONFIG_OPTIONS["width"].help),
    optimizers: str = typer.Option("", help="Also time these optimisers' epochs against SGD, e.g. rm3,m3 (m3 needs a "
                                            "batch size divisible by 3); comma-separated names of: "
                                            + registry_help("optimizers")),
    repeats: int = typer.Option(3, help="Timed repetitions per quantity (median kept), after one warm-up."),
    device: Device = "auto",
    json_output: JsonOutput = False,
) -> None:
    """Measure training, in-flight recording, clean pass, GraNd and store-write costs as ratios."""
    from scorebank.pipeline.bench import TARGETS, BenchSpec, run_bench

    with handle_errors():
        try:
            dims = tuple(int(v) for v in shape.lower().split("x"))
        except ValueError:
            dims = ()
        if len(dims) != 3 or min(dims) < 1:
            raise InvalidArgumentError(f"bad --shape {shape!r}; give CxHxW, e.g. 3x32x32")
        spec = BenchSpec(model=model, n=n, shape=dims, classes=classes, batch_size=batch_size, width=width,
                         device=device, repeats=repeats,
                         optimizers=tuple(o for o in optimizers.split(",") if o))
        with err_console.status("benchmarking") as status:
            result = run_bench(spec, progress=lambda msg: status.update(f"benchmarking: {msg}"))
    if json_output:
        print_json(result)
        return
    table = compact_table("quantity", "value", "goal", fold=())
    for key, value in result.items():
        goal = f"<= {TARGETS[key]:g}" if key in TARGETS else ""
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown, goal)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
