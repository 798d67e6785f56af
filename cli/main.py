"""The ``scorebank`` command: a thin typer layer that parses, calls the library, prints.

Each command lives in its own module and is registered below."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="scorebank",
    help="Record per-example training scores (margin, EL2N, loss, forgetting, GraNd) in Zarr "
         "stores, analyse them with Dask/xarray, select subsets and retrain on them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# --- command registration: one line per command module -------------------------------
from scorebank.cli import analyze as _analyze  # noqa: E402
from scorebank.cli import archive as _archive  # noqa: E402
from scorebank.cli import bench as _bench  # noqa: E402
from scorebank.cli import easyhard as _easyhard  # noqa: E402
from scorebank.cli import info as _info  # noqa: E402
from scorebank.cli import retrain as _retrain  # noqa: E402
from scorebank.cli import score as _score  # noqa: E402
from scorebank.cli import select as _select  # noqa: E402

_score.register(app)
_info.register(app)
_bench.register(app)
_retrain.register(app)
_analyze.register(app)
_select.register(app)
_archive.register(app)
_easyhard.register(app)
# --- end of command registration -------------------------------------------------------


def main() -> None:
    app()


if __name__ == "__main__":
    main()
