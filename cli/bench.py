"""``scorebank bench``: recording-cost ratios on the current device; ``--recorder``: what the
recorder API costs inside a plain user training loop (:mod:`scorebank.pipeline.bench_record`);
``--modes``: the training epoch per precision mode (:mod:`scorebank.pipeline.bench_precision`)."""

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
    recorder: bool = typer.Option(False, "--recorder", help="Instead, time a plain PyTorch loop with and without "
                                                           "the recorder API (scorebank.pipeline.record): "
                                                           "recorder_overhead (goal <= 3%) and the recorder's clean "
                                                           "pass against a bare forward."),
    dispatch: bool = typer.Option(False, "--dispatch", help="Instead, score 4 digits seeds sequentially and as Dask "
                                                           "tasks on a LocalCluster of --workers processes: "
                                                           "workers_over_sequential (goal <= 0.6 with 2 workers on "
                                                           "2 cores); uses --model, --width, --batch-size, --epochs."),
    modes: str = typer.Option("", help="Instead, time the plain training epoch in these precision modes, alternately "
                                       "in one run, with each one's ratio to fp32 (always timed): 'all' or "
                                       "comma-separated names of: " + registry_help("precision_modes")
                                       + " A mode that cannot run here (torch.compile failing) is reported "
                                         "unavailable with the reason."),
    workers: int = typer.Option(2, help="--dispatch: LocalCluster processes (one thread each)."),
    epochs: int = typer.Option(5, help="--dispatch: epochs of every run."),
    device: Device = "auto",
    json_output: JsonOutput = False,
) -> None:
    """Measure training, in-flight recording, clean pass, GraNd and store-write costs as ratios; with
    --modes, the training epoch in each precision mode (fp32, bf16, with and without torch.compile)."""
    from scorebank.pipeline import bench, bench_record
    from scorebank.pipeline.bench import BenchSpec

    if dispatch and modes:
        with handle_errors():
            raise InvalidArgumentError(f"--modes {modes!r} times training epochs in this process; --dispatch times "
                                       "scoring on workers: drop one of them")
    if dispatch:
        return _bench_dispatch(model, width, batch_size, epochs, workers, device, json_output)

    run_bench, targets = (bench_record.bench_recorder, bench_record.TARGETS) if recorder else \
        (bench.run_bench, bench.TARGETS)
    with handle_errors():
        if recorder and optimizers:
            raise InvalidArgumentError(f"--optimizers {optimizers!r} times the built-in trainer's optimisers; "
                                       "--recorder times a plain SGD loop: drop one of them")
        if modes:
            from scorebank.pipeline.bench_precision import bench_precision, parse_modes

            if recorder or optimizers:
                raise InvalidArgumentError(f"--modes {modes!r} times plain SGD epochs per precision mode; drop "
                                           + ("--recorder" if recorder else f"--optimizers {optimizers!r}")
                                           + " or --modes")
            chosen = parse_modes(modes)
            run_bench, targets = (lambda spec, progress: bench_precision(spec, chosen, progress)), {}
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
    _print_result(result, targets, json_output)


def _bench_dispatch(model: str, width: int | None, batch_size: int, epochs: int, workers: int, device: str,
                    json_output: bool) -> None:
    """``--dispatch``: :func:`scorebank.pipeline.bench_dispatch.bench_dispatch` on a LocalCluster."""
    from scorebank.cli.common import dask_client
    from scorebank.pipeline.bench_dispatch import TARGETS, bench_dispatch
    from scorebank.pipeline.config import resolve_config

    with handle_errors():
        if not 1 <= epochs <= 1000:
            raise InvalidArgumentError(f"--epochs {epochs!r} is out of range; give 1..1000")
        config = resolve_config(dataset="digits", model=model, width=width, batch_size=batch_size, epochs=epochs)
        with dask_client(workers, None) as client, err_console.status("benchmarking") as status:
            result = bench_dispatch(config, (0, 1, 2, 3), client, device=device,
                                    progress=lambda msg: status.update(f"benchmarking: {msg}"))
    _print_result(result, TARGETS, json_output)


def _print_result(result: dict, targets: dict, json_output: bool) -> None:
    """A benchmark's quantities as JSON, or as a table with the goal of those in ``targets``."""
    if json_output:
        print_json(result)
        return
    table = compact_table("quantity", "value", "goal", fold=())
    for key, value in result.items():
        goal = f"<= {targets[key]:g}" if key in targets else ""
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        table.add_row(key, shown, goal)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)
