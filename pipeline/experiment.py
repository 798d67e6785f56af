"""Staged experiments: one TOML file declares the stores and the stages of a study (score ->
analyses -> select -> retrain / prune-curve / compress / easy-hard / holdout -> report), and
:func:`run_experiment` runs what is not done yet.

File format (keys are the CLI's option names without ``--``)::

    [experiment]
    name = "digits-quick"
    title = "The default job and an EL2N pruning curve"
    reproduces = "Data Diet (Paul et al. 2021) Fig. 1, bottom row (at digits scale)"
    [experiment.published]                       # the paper's numbers, copied into results.json
    "full-data test accuracy (CIFAR-10, ResNet-18)" = 0.955

    [stores.digits]
    path = "digits.zarr"                         # relative to the output directory

    [stages.score]
    kind = "score"                               # a STAGES entry
    store = "digits"                             # default: the only store
    seeds = "0-2"
    epochs = 20

    [stages.prune]
    kind = "prune-curve"
    score = "el2n@5"
    strategies = ["keep-highest", "random"]
    prune = [0.3, 0.6]

Everything is validated before anything runs (:func:`load_experiment`): an unknown stage
kind or key, a wrong type, a bad value or a reference to a missing stage is one
:class:`ExperimentError` line naming the file, the stage and the key.

Idempotence: a finished stage is recognised from what its store records -- the scoring
configuration and each run's status (score), the manifest (select), the retrain groups and
their completed seeds (retrain, prune-curve), the compression group (compress), the
easy/hard group (easy-hard), the holdout group's finished folds (holdout) -- and skipped.
Analyses write nothing into the store: they are done when the output directory's ledger
(``experiment-state.json``) holds their result for the same definition and the same scoring
state of the store (configuration and run statuses).  The ledger also keeps every stage's
definition, so a stage whose definition changed since it ran is refused
(:class:`StageChangedError`) unless it is named in ``rerun`` (which replaces what it wrote);
so is a stage whose earlier output no longer matches its inputs (a retrain trained on another
subset than its select stage now records).  The ``report`` stage (added last when the file
has none) is redone when the results change.  ``results.json`` gathers every number the
stages produced, next to the published ones.

Dask: with a ``client`` the runs of every stage that trains (score, retrain, prune-curve,
easy-hard, holdout) are tasks on its workers; the stores equal a sequential run's bit for bit
on CPU at the same torch thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from scorebank.core.config import ScoreConfig
from scorebank.core.errors import ConfigMismatchError, InvalidArgumentError, ScorebankError
from scorebank.core.registry import Registry

LEDGER = "experiment-state.json"
RESULTS = "results.json"
REPORT_DIR = "report"
PRESETS_PACKAGE = "scorebank.pipeline.presets"


class ExperimentError(InvalidArgumentError):
    """The experiment file is not valid (exit status 2); the message names file, stage and key."""


class StageChangedError(ScorebankError):
    """A stage's definition differs from the one that produced what is on disk (exit status 1)."""


# ============================================================================= key types
@dataclass(frozen=True)
class KeyType:
    """How one TOML value is checked and converted for the library call."""

    name: str  # shown in messages: "an integer", ...
    convert: Callable[[Any], Any]  # raises TypeError / ValueError when the value does not fit


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _as_int(v):
    if not _is_int(v):
        raise TypeError
    return v


def _as_float(v):
    if not (_is_int(v) or isinstance(v, float)):
        raise TypeError
    return float(v)


def _as_str(v):
    if not isinstance(v, str):
        raise TypeError
    return v


def _as_bool(v):
    if not isinstance(v, bool):
        raise TypeError
    return v


def _as_list(item: Callable[[Any], Any], parse_item: Callable[[str], Any]):
    """A TOML array, or the CLI's comma-separated string, of items."""
    def convert(v):
        if isinstance(v, str):
            parts = [p.strip() for p in v.split(",") if p.strip()]
            try:
                return [parse_item(p) for p in parts]
            except ValueError:
                raise TypeError from None
        if not isinstance(v, list):
            raise TypeError
        return [item(x) for x in v]
    return convert


def _as_seeds(v):
    """A seed list as the CLI writes it ("0-3,7") or an array of integers; parsed to a tuple."""
    from scorebank.core.config import parse_seeds

    if isinstance(v, list):
        v = ",".join(str(_as_int(x)) for x in v)
    if not isinstance(v, str):
        raise TypeError
    return parse_seeds(v)


INT = KeyType("an integer", _as_int)
FLOAT = KeyType("a number", _as_float)
STR = KeyType("a string", _as_str)
BOOL = KeyType("true or false", _as_bool)
SEEDS = KeyType('a seed list like "0-3" or an array of integers', _as_seeds)
FLOATS = KeyType('an array of numbers or a string like "0.2,0.4"', _as_list(_as_float, float))
INTS = KeyType('an array of integers or a string like "20,100"', _as_list(_as_int, int))
STRS = KeyType('an array of strings or a string like "a,b"', _as_list(_as_str, str))


@dataclass(frozen=True)
class Key:
    type: KeyType
    help: str = ""
    default: Any = None  # None: the library's default (not passed)


# ============================================================================= stage kinds
@dataclass(frozen=True)
class StageKind:
    """One kind of stage: its keys and how it runs.

    ``run(ctx, stage)`` does the work and returns the numbers it produced (JSON-able);
    ``done(ctx, stage)`` says, from what the store records, whether a run would do nothing
    (None: the kind writes nothing into a store -- the ledger decides); ``needs_store``: the
    stage works on one of the experiment's stores."""

    keys: dict[str, Key]
    run: Callable[["Context", "Stage"], dict]
    done: Callable[["Context", "Stage"], bool] | None = None
    needs_store: bool = True
    check: Callable[["Stage", str], None] | None = None  # extra up-front validation (raises ExperimentError)


STAGES: Registry[StageKind] = Registry("stage kind", "kind")


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    store: str | None  # the store's name in [stores]
    options: dict  # key (CLI spelling) -> converted value
    raw: dict  # the TOML table as written, without kind/store (for the ledger)

    def opt(self, key: str, default: Any = None) -> Any:
        v = self.options.get(key)
        return default if v is None else v

    def definition(self, store_path: str | None) -> dict:
        return {"kind": self.kind, "store": store_path, "options": self.raw}


@dataclass(frozen=True)
class Experiment:
    source: str  # the file (or preset) shown in messages
    name: str
    title: str
    reproduces: str
    published: dict
    notes: str
    stores: dict[str, str]  # store name -> path as written
    stages: tuple[Stage, ...]


# ============================================================================= loading and validation
META_KEYS = {"name": STR, "title": STR, "reproduces": STR, "published": None, "notes": STR}
STORE_KEYS = {"path": STR}


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate an experiment file (see the module docstring)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ExperimentError(f"experiment file {str(p)!r} does not exist") from None
    except (UnicodeDecodeError, IsADirectoryError) as exc:
        raise ExperimentError(f"cannot read experiment file {str(p)!r}: {exc}") from None
    return parse_experiment(text, str(p))


def parse_experiment(text: str, source: str) -> Experiment:
    """Validate the TOML ``text`` of an experiment; ``source`` names it in messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{source}: not valid TOML: {exc}") from None

    def fail(where: str, message: str) -> ExperimentError:
        return ExperimentError(f"{source}: {where}: {message}")

    for top in doc:
        if top not in ("experiment", "stores", "stages"):
            raise fail(f"table {top!r}", "unknown table; an experiment has [experiment], [stores.NAME] and "
                                         "[stages.NAME]")
    meta = _table(doc.get("experiment", {}), "[experiment]", fail)
    for k, v in meta.items():
        if k not in META_KEYS:
            raise fail("[experiment]", f"unknown key {k!r}; it takes {', '.join(META_KEYS)}")
        if k == "published":
            if not isinstance(v, dict):
                raise fail("[experiment]", f"key 'published' must be a table, got {_shown(v)}")
        elif not isinstance(v, str):
            raise fail("[experiment]", f"key {k!r} must be a string, got {_shown(v)}")
    name = meta.get("name") or Path(source).stem
    stores: dict[str, str] = {}
    for sname, table in _table(doc.get("stores", {}), "[stores]", fail).items():
        table = _table(table, f"store {sname!r}", fail)
        for k, v in table.items():
            if k not in STORE_KEYS:
                raise fail(f"store {sname!r}", f"unknown key {k!r}; a store takes path")
        path = table.get("path", f"{sname}.zarr")
        if not isinstance(path, str) or not path:
            raise fail(f"store {sname!r}", f"key 'path' must be a non-empty string, got {_shown(path)}")
        stores[sname] = path
    stages_doc = _table(doc.get("stages", {}), "[stages]", fail)
    if not stages_doc:
        raise fail("[stages]", "no stages; declare at least one, e.g. [stages.score] kind = \"score\"")
    stages: list[Stage] = []
    for sname, table in stages_doc.items():
        where = f"stage {sname!r}"
        table = _table(table, where, fail)
        kind = table.get("kind")
        if kind is None:
            raise fail(where, f"no 'kind'; kind takes {STAGES.choices()}")
        if kind not in STAGES:
            raise fail(where, f"unknown kind {kind!r}; kind takes {STAGES.choices()}")
        spec = STAGES.get(kind)
        store = table.get("store")
        if spec.needs_store:
            if store is None:
                if len(stores) != 1:
                    raise fail(where, "no 'store'; name one of the [stores] tables "
                                      f"({', '.join(stores) or 'none declared'})")
                store = next(iter(stores))
            elif not isinstance(store, str) or store not in stores:
                raise fail(where, f"key 'store' names no [stores] table: {store!r}; declared: "
                                  f"{', '.join(stores) or 'none'}")
        elif store is not None:
            raise fail(where, f"key 'store': a {kind} stage takes no store")
        options = {}
        raw = {k: v for k, v in table.items() if k not in ("kind", "store")}
        for k, v in raw.items():
            key = spec.keys.get(k)
            if key is None:
                alt = k.replace("_", "-")
                hint = (f"did you mean {alt!r}?" if alt != k and alt in spec.keys
                        else f"it takes {', '.join(spec.keys) or 'no keys'}")
                raise fail(where, f"unknown key {k!r} for kind {kind!r}; {hint}")
            try:
                options[k] = key.type.convert(v)
            except (TypeError, ValueError):
                raise fail(where, f"key {k!r} must be {key.type.name}, got {_shown(v)}") from None
            except InvalidArgumentError as exc:
                raise fail(where, f"key {k!r}: {exc}") from None
        for k, key in spec.keys.items():
            if key.default is not None and k not in options:
                options[k] = key.default
        stage = Stage(sname, kind, store, options, raw)
        if spec.check is not None:
            try:
                spec.check(stage, source)
            except ExperimentError:
                raise
            except InvalidArgumentError as exc:
                raise fail(where, str(exc)) from None
        stages.append(stage)
    _check_order(stages, stores, fail)
    if not any(s.kind == "report" for s in stages):
        stages.append(Stage("report", "report", None, {}, {}))
    return Experiment(source, name, meta.get("title", ""), meta.get("reproduces", ""),
                      dict(meta.get("published", {})), meta.get("notes", ""), stores, tuple(stages))


def _table(v, where: str, fail) -> dict:
    if not isinstance(v, dict):
        raise fail(where, f"must be a table, got {_shown(v)}")
    return v


def _shown(v) -> str:
    return f"{type(v).__name__} {v!r}"


def _check_order(stages: list[Stage], stores: dict[str, str], fail) -> None:
    """A store is scored at most once and before it is used; references point back."""
    scored: dict[str, str] = {}
    seen: dict[str, Stage] = {}
    for s in stages:
        where = f"stage {s.name!r}"
        if s.kind == "score":
            if s.store in scored:
                raise fail(where, f"store {s.store!r} is already scored by stage {scored[s.store]!r}")
            scored[s.store] = s.name
        elif s.kind == "report" and s is not stages[-1]:
            raise fail(where, "the report stage comes last")
        for k in ("manifest",):
            ref = s.options.get(k)
            if ref is not None:
                if ref not in seen or seen[ref].kind != "select":
                    raise fail(where, f"key {k!r} names no earlier select stage: {ref!r}")
                if seen[ref].store != s.store:
                    raise fail(where, f"key {k!r}: select stage {ref!r} works on store {seen[ref].store!r}, "
                                      f"this stage on {s.store!r}")
        seen[s.name] = s
    for s in stages:
        if s.store is not None and s.store in scored and stages.index(s) < stages.index(seen[scored[s.store]]):
            raise fail(f"stage {s.name!r}", f"uses store {s.store!r} before stage {scored[s.store]!r} scores it")


# ============================================================================= presets
def preset_names() -> list[str]:
    """Names of the experiment files shipped as package data."""
    root = resources.files(PRESETS_PACKAGE)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> Experiment:
    """The shipped experiment ``name`` (:func:`preset_names`)."""
    if name not in preset_names():
        raise InvalidArgumentError(f"unknown preset {name!r}; --preset takes {', '.join(preset_names())}")
    text = resources.files(PRESETS_PACKAGE).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_experiment(text, f"preset {name}")


def presets() -> list[Experiment]:
    return [load_preset(n) for n in preset_names()]


# ============================================================================= running
@dataclass
class Context:
    """What the stages of one run share."""

    experiment: Experiment
    out: Path
    device: str = "auto"
    rerun: frozenset[str] = frozenset()
    ledger: dict = field(default_factory=dict)
    relay: Callable[[Any], None] | None = None  # the running stage's training events (ProgressEvent)
    client: Any = None  # a distributed.Client: the runs of every stage that trains are Dask tasks on its workers
    gpus_per_run: int = 0

    def store_path(self, stage: Stage) -> Path:
        p = Path(self.experiment.stores[stage.store])
        return p if p.is_absolute() else self.out / p

    def file(self, stage: Stage, suffix: str) -> Path:
        return self.out / f"{stage.name}{suffix}"

    def results_of(self, name: str) -> dict | None:
        entry = self.ledger.get("stages", {}).get(name)
        return None if entry is None else entry.get("results")


@dataclass(frozen=True)
class PlanRow:
    stage: Stage
    status: str  # "done", "to run", "changed" (refused unless rerun), "rerun"
    detail: str = ""


@dataclass(frozen=True)
class StageEvent:
    """Progress of :func:`run_experiment`: ``kind`` is "start", "skip", "done", or "run" for
    a training event of the running stage (``run_event``: a
    :class:`scorebank.pipeline.lifecycle.ProgressEvent`)."""

    kind: str
    index: int
    total: int
    stage: Stage
    seconds: float = 0.0
    run_event: Any = None


def _read_ledger(out: Path) -> dict:
    p = out / LEDGER
    if not p.is_file():
        return {"stages": {}}
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ScorebankError(f"{str(p)!r} is not a valid experiment ledger; remove it to start over") from None
    return doc if isinstance(doc.get("stages"), dict) else {"stages": {}}


def _write_json(path: Path, doc: Any) -> None:
    """Write ``doc`` as strict JSON (NaN and infinities as null), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(jsonable(doc), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy values, tuples and non-finite floats made strict-JSON-able."""
    if isinstance(obj, (np.generic, np.ndarray)):
        obj = obj.tolist()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def store_state(path: Path) -> str | None:
    """A digest of a store's scoring state (configuration and each run's status); None when
    there is no store.  Analyses are redone when it changes."""
    zj = path / "zarr.json"
    if not zj.is_file():
        return None
    from scorebank.stores import schema as S

    attrs = json.loads(zj.read_text(encoding="utf-8")).get("attributes", {})
    doc = {"config": attrs.get(S.ATTR_CONFIG), "runs": attrs.get(S.ATTR_RUNS),
           "fingerprint": attrs.get(S.ATTR_FINGERPRINT)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _digest(doc: Any) -> str:
    return hashlib.sha256(json.dumps(jsonable(doc), sort_keys=True).encode()).hexdigest()[:16]


def _inputs(ctx: Context, stage: Stage) -> dict:
    """What a ledger-decided stage's result depends on besides its definition."""
    if stage.kind == "report":
        return {"results": _digest(_results_doc(ctx, exclude="report"))}
    return {"store": store_state(ctx.store_path(stage))} if stage.store else {}


def stage_status(ctx: Context, stage: Stage) -> PlanRow:
    """Whether ``stage`` is done, remains, or changed since it ran (see the module docstring)."""
    spec = STAGES.get(stage.kind)
    definition = _definition(ctx, stage)
    entry = ctx.ledger.get("stages", {}).get(stage.name)
    if entry is not None and entry.get("definition") != jsonable(definition):
        if stage.name in ctx.rerun:
            return PlanRow(stage, "rerun", "definition changed; --rerun given")
        return PlanRow(stage, "changed", _describe_change(entry.get("definition"), jsonable(definition)))
    if stage.name in ctx.rerun:
        return PlanRow(stage, "rerun", "--rerun given")
    if spec.done is not None:
        try:
            return PlanRow(stage, "done" if spec.done(ctx, stage) else "to run")
        except ConfigMismatchError as exc:
            return PlanRow(stage, "changed", str(exc))
    if entry is not None and entry.get("inputs") == _inputs(ctx, stage) and "results" in entry:
        if stage.kind != "report" or (ctx.out / REPORT_DIR / "index.html").is_file():
            return PlanRow(stage, "done")
    return PlanRow(stage, "to run")


def _definition(ctx: Context, stage: Stage) -> dict:
    """What the ledger compares: kind, the store's path as written (relative to the output
    directory, so a moved directory stays done) and the options as written."""
    return stage.definition(None if stage.store is None else ctx.experiment.stores[stage.store])


def _describe_change(old: dict | None, new: dict) -> str:
    old = old or {}
    parts = []
    if old.get("kind") != new.get("kind"):
        parts.append(f"kind was {old.get('kind')!r}, now {new.get('kind')!r}")
    if old.get("store") != new.get("store"):
        parts.append(f"store was {old.get('store')!r}, now {new.get('store')!r}")
    a, b = old.get("options", {}) or {}, new.get("options", {})
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            parts.append(f"{k} was {a.get(k)!r}, now {b.get(k)!r}")
    return "; ".join(parts)


def plan(experiment: Experiment, out: str | os.PathLike, *, rerun: Sequence[str] = ()) -> list[PlanRow]:
    """Every stage with its status, reading only what is on disk."""
    ctx = _context(experiment, out, rerun=rerun)
    return [stage_status(ctx, s) for s in experiment.stages]


def _context(experiment: Experiment, out, *, rerun: Sequence[str] = (), device: str = "auto") -> Context:
    names = {s.name for s in experiment.stages}
    unknown = [r for r in rerun if r not in names]
    if unknown:
        raise InvalidArgumentError(f"--rerun {unknown[0]!r} names no stage of {experiment.source}; "
                                   f"its stages: {', '.join(s.name for s in experiment.stages)}")
    out = Path(out)
    return Context(experiment, out, device, frozenset(rerun), _read_ledger(out))


def run_experiment(experiment: Experiment, out: str | os.PathLike, *, device: str = "auto",
                   rerun: Sequence[str] = (), client=None, gpus_per_run: int = 0,
                   progress: Callable[[StageEvent], None] | None = None) -> dict:
    """Run every stage that is not done (in file order), record each in the ledger, and write
    ``results.json`` and the report into ``out``; returns the results document.

    A stage whose definition changed since it ran raises :class:`StageChangedError` before
    anything runs, unless named in ``rerun``.  ``client`` (a ``distributed.Client``) runs the
    runs of every stage that trains (score, retrain, prune-curve, easy-hard, holdout) as Dask
    tasks (the library functions' ``client``; compress trains one trajectory, in this process)."""
    ctx = _context(experiment, out, rerun=rerun, device=device)
    ctx.client, ctx.gpus_per_run = client, gpus_per_run
    rows = [stage_status(ctx, s) for s in experiment.stages]
    changed = [r for r in rows if r.status == "changed"]
    if changed:
        r = changed[0]
        raise StageChangedError(
            f"{experiment.source}: stage {r.stage.name!r} changed since it ran ({r.detail}); pass --rerun "
            f"{r.stage.name} to redo it (replacing what it wrote), or restore its definition")
    ctx.out.mkdir(parents=True, exist_ok=True)
    total = len(experiment.stages)
    for i, stage in enumerate(experiment.stages):
        row = rows[i] if stage.kind != "report" else stage_status(ctx, stage)  # the report sees the new results
        if row.status == "done":
            if progress:
                progress(StageEvent("skip", i, total, stage))
            continue
        if progress:
            progress(StageEvent("start", i, total, stage))
            ctx.relay = lambda ev, i=i, stage=stage: progress(StageEvent("run", i, total, stage, run_event=ev))
        t0 = time.perf_counter()
        try:
            results = STAGES.get(stage.kind).run(ctx, stage)
        except ConfigMismatchError as exc:  # what the stage wrote before differs (an earlier stage changed)
            raise StageChangedError(f"{experiment.source}: stage {stage.name!r} would change what it wrote before "
                                    f"({exc}); pass --rerun {stage.name} to replace it") from None
        finally:
            ctx.relay = None
        definition = _definition(ctx, stage)
        ctx.ledger.setdefault("stages", {})[stage.name] = jsonable(
            {"definition": definition, "inputs": _inputs(ctx, stage), "results": results,
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        _write_json(ctx.out / LEDGER, ctx.ledger)
        if stage.kind != "report":
            _write_json(ctx.out / RESULTS, _results_doc(ctx))
        if progress:
            progress(StageEvent("done", i, total, stage, time.perf_counter() - t0))
    doc = _results_doc(ctx)
    _write_json(ctx.out / RESULTS, doc)
    return jsonable(doc)


def _results_doc(ctx: Context, exclude: str | None = None) -> dict:
    exp = ctx.experiment
    stages = {}
    for s in exp.stages:
        if s.kind == exclude or (exclude is None and s.kind == "report"):
            continue
        res = ctx.results_of(s.name)
        if res is not None:
            stages[s.name] = {"kind": s.kind, "store": None if s.store is None else exp.stores[s.store],
                              "results": res}
    return {"experiment": {"name": exp.name, "title": exp.title, "reproduces": exp.reproduces,
                           "source": exp.source, "notes": exp.notes},
            "published": exp.published, "stores": dict(exp.stores),  # as written: relative to the directory
            "stages": stages}


# ============================================================================= stage kinds: score
def _score_keys() -> dict[str, Key]:
    types = {"str": STR, "str | None": STR, "bool": BOOL, "int": INT, "int | None": INT, "float": FLOAT,
             "float | None": FLOAT}
    keys = {f.name.replace("_", "-"): Key(types[f.type], f"--{f.name.replace('_', '-')} of scorebank score")
            for f in dataclasses.fields(ScoreConfig) if f.type in types}
    keys.update({"record-every": Key(INT, "clean pass every K epochs"),
                 "record-epochs": Key(INTS, "clean pass at these epochs"),
                 "grand-epochs": Key(INTS, "GraNd at these epochs"),
                 "seeds": Key(SEEDS, "scoring seeds", default=(0, 1, 2))})
    return keys


def _score_config(stage: Stage) -> ScoreConfig:
    from scorebank.pipeline.config import resolve_config

    fields = {k.replace("-", "_"): v for k, v in stage.options.items()
              if k not in ("seeds", "record-every", "record-epochs", "grand-epochs")}
    rec = stage.options.get("record-epochs")
    gr = stage.options.get("grand-epochs")
    return resolve_config(**fields, record_every=stage.options.get("record-every"),
                          record_epochs=None if rec is None else tuple(rec),
                          grand_epochs=None if gr is None else tuple(gr))


def _check_score(stage: Stage, source: str) -> None:
    _score_config(stage)


def _score_done(ctx: Context, stage: Stage) -> bool:
    from scorebank.pipeline.scoring import read_store_config
    from scorebank.stores import schema as S

    path = ctx.store_path(stage)
    if store_state(path) is None:
        return False
    cfg = _score_config(stage)
    old = read_store_config(path)
    if old.differences(cfg):
        raise ConfigMismatchError(f"store {str(path)!r} was scored with another configuration "
                                  f"({old.describe_differences(cfg)})")
    runs = json.loads((path / "zarr.json").read_text())["attributes"].get(S.ATTR_RUNS, {})
    return all(runs.get(str(s), {}).get("status") == S.RUN_COMPLETE for s in stage.opt("seeds"))


def _score_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.pipeline.scoring import score

    cfg = _score_config(stage)
    path = ctx.store_path(stage)
    score(cfg, tuple(stage.opt("seeds")), path, device=ctx.device, overwrite=stage.name in ctx.rerun,
          progress=ctx.relay, client=ctx.client, gpus_per_run=ctx.gpus_per_run)
    return _score_summary(path)


def _score_summary(path: Path) -> dict:
    from scorebank.analysis.curves import training_curves
    from scorebank.analysis.separation import data_separation

    curves = training_curves(str(path))
    out: dict[str, Any] = {"runs": curves.attrs["runs"]}
    for name in ("test_accuracy", "train_accuracy", "pristine_accuracy", "corrupt_accuracy"):
        if name in curves:
            v = curves[name].values
            last = [float(row[np.isfinite(row)][-1]) if np.isfinite(row).any() else math.nan for row in v]
            out[f"final_{name}"] = dict(zip(map(str, curves.attrs["runs"]), last))
            out[f"mean_final_{name}"] = float(np.nanmean(last)) if np.isfinite(last).any() else math.nan
    sep = data_separation(str(path))
    out["separation_epoch"] = {str(int(r)): (None if e < 0 else int(e)) for r, e in zip(sep["run"].values, sep.values)}
    return out


STAGES.add("score", StageKind(_score_keys(), _score_run, _score_done, check=_check_score),
           help="train the seeds and record every example's scores (scorebank score)")


# ============================================================================= stage kinds: analyses
AVERAGED_KEYS = {"runs": Key(STR, "runs averaged, e.g. 0-4"), "reduce": Key(STR, "mean or sum"),
                 "never-learned": Key(STR, "count or inf")}


def _runs(stage: Stage):
    from scorebank.analysis.access import parse_runs

    r = stage.options.get("runs")
    return None if r is None else parse_runs(r)


def _averaging(stage: Stage) -> dict:
    return {"runs": _runs(stage), "reduce": stage.opt("reduce", "mean"),
            "never_learned": stage.opt("never-learned", "count")}


def _check_specs(stage: Stage, source: str) -> None:
    from scorebank.analysis.scores import parse_score

    for s in stage.opt("specs", []):
        parse_score(s)
    if stage.options.get("runs") is not None:
        _runs(stage)


def _correlation(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.correlation import spearman_matrix

    mat = spearman_matrix(str(ctx.store_path(stage)), stage.opt("specs"), **_averaging(stage))
    return {"scores": [str(n) for n in mat["score_a"].values], "runs": mat.attrs.get("runs"),
            "spearman": mat.values}


def _noise(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.noise import noise_detection

    res = noise_detection(str(ctx.store_path(stage)), stage.opt("specs"), **_averaging(stage))
    return {"noise_rate": float(res["noise_rate"]), "n_corrupted": int(res["n_corrupted"]),
            "scores": {str(s): {"roc_auc": float(res["roc_auc"].sel(score=s)),
                                "precision_at_noise_rate": float(res["precision_at_noise_rate"].sel(score=s))}
                       for s in res["score"].values}}


def _overlap(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.overlap import margin_overlaps

    res = margin_overlaps(str(ctx.store_path(stage)), k=stage.opt("k", [20, 100, 200]), runs=_runs(stage))
    out: dict[str, Any] = {"epochs": res["epoch"].values, "k": res["k"].values,
                           "separation_epoch": res["separation_epoch"].values}
    with np.errstate(all="ignore"):
        out["retention_mean"] = np.nanmean(np.where(np.isfinite(res["retention"].values),
                                                    res["retention"].values, np.nan), axis=1)
    if "pairwise_mean" in res:
        out["pairwise_mean"] = res["pairwise_mean"].values
    return out


def _forgetting(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis import access
    from scorebank.analysis.forgetting import forgetting, forgetting_summary

    ds = access.open_store(str(ctx.store_path(stage)))
    res = forgetting(ds, epoch=stage.options.get("epoch"), runs=_runs(stage),
                     never_learned=stage.opt("never-learned", "count"))
    return forgetting_summary(res, access.labels(ds), reduce=stage.opt("reduce", "mean"),
                              top=stage.opt("top", 10)).to_dict()


def _separation(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.separation import data_separation, final_train_accuracy

    path = str(ctx.store_path(stage))
    sep = data_separation(path, runs=_runs(stage))
    seeds = [int(s) for s in sep["run"].values]
    acc = final_train_accuracy(path, runs=seeds).values
    return {"runs": [{"run": s, "separation_epoch": None if e < 0 else int(e), "final_train_accuracy": float(a)}
                     for s, e, a in zip(seeds, sep.values, acc)]}


def _margins(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.distribution import margin_distribution

    res = margin_distribution(str(ctx.store_path(stage)), gammas=stage.opt("gamma", [0.01, 0.1]), runs=_runs(stage))
    with np.errstate(all="ignore"):
        return {"epochs": res["epoch"].values, "runs": res["run"].values,
                "auc_mean": np.nanmean(res["auc"].values, axis=0),
                "smallest_mean": np.nanmean(res["smallest"].values, axis=0)}


def _curves(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.curves import training_curves

    res = training_curves(str(ctx.store_path(stage)), runs=_runs(stage))
    out: dict[str, Any] = {"epochs": res["epoch"].values, "runs": res.attrs["runs"]}
    with np.errstate(all="ignore"):
        for name in ("train_accuracy", "test_accuracy", "pristine_accuracy", "corrupt_accuracy"):
            if name in res:
                out[f"{name}_mean"] = np.nanmean(res[name].values, axis=0)
    return out


def _difficulty(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.difficulty import difficulty

    res = difficulty(str(ctx.store_path(stage)), threshold=stage.opt("threshold", 0.5), runs=_runs(stage))
    hard = res["hard"].values
    return {"runs": res["run"].values, "threshold_epoch": res["threshold_epoch"].values,
            "n_hard": hard.sum(axis=1), "n_examples": int(hard.shape[1])}


_ANALYSES = (
    ("correlation", _correlation, {"specs": Key(STRS, "score specs"), **AVERAGED_KEYS}, _check_specs,
     "Spearman correlations between scores averaged over runs (analyze correlation)"),
    ("noise", _noise, {"specs": Key(STRS, "score specs"), **AVERAGED_KEYS}, _check_specs,
     "ROC AUC of scores finding corrupted labels (analyze noise)"),
    ("overlap", _overlap, {"k": Key(INTS, "set sizes"), "runs": AVERAGED_KEYS["runs"]}, None,
     "smallest-margin set overlaps across runs and epochs (analyze overlap)"),
    ("forgetting", _forgetting, {"epoch": Key(INT, "count over epochs 1..E"), "top": Key(INT, "most forgotten"),
                                 **AVERAGED_KEYS}, None, "forgetting events (analyze forgetting)"),
    ("separation", _separation, {"runs": AVERAGED_KEYS["runs"]}, None,
     "first epoch with 100% clean train accuracy (analyze separation)"),
    ("margins", _margins, {"gamma": Key(FLOATS, "gammas"), "runs": AVERAGED_KEYS["runs"]}, None,
     "normalised-margin distribution over epochs (analyze margins)"),
    ("curves", _curves, {"runs": AVERAGED_KEYS["runs"]}, None,
     "train/pristine/corrupt/test accuracy per epoch (analyze curves)"),
    ("difficulty", _difficulty, {"threshold": Key(FLOAT, "training accuracy threshold"),
                                 "runs": AVERAGED_KEYS["runs"]}, None, "easy/hard examples (analyze difficulty)"),
)


def _require_specs(stage: Stage, source: str) -> None:
    if not stage.options.get("specs"):
        raise InvalidArgumentError("key 'specs' is required, e.g. specs = [\"el2n@5\", \"forgetting\"]")
    _check_specs(stage, source)


for _name, _fn, _keys, _check, _help in _ANALYSES:
    STAGES.add(_name, StageKind(_keys, _fn, None, check=_require_specs if "specs" in _keys else _check), help=_help)


# ============================================================================= stage kinds: select, retrain
SELECT_KEYS = {"score": Key(STR, "score spec"), "strategy": Key(STR, "selection strategy"),
               "keep": Key(FLOAT, "fraction kept"), "offset": Key(FLOAT, "window offset"),
               "count": Key(INT, "smallest-margin count"), "seed": Key(INT, "random/stratified seed"),
               "bins": Key(INT, "stratified bins"), "hard-cutoff": Key(FLOAT, "stratified hard cutoff"),
               "class-balanced": Key(BOOL, "per class"), **AVERAGED_KEYS}


def _manifest_name(stage: Stage) -> str:
    """The manifest's name: the stage's name and a digest of its definition, so a changed
    selection never collides with the one recorded before."""
    return f"{stage.name}-{_digest(stage.raw)[:8]}"


def _check_select(stage: Stage, source: str) -> None:
    from scorebank.analysis.selection import make_rule
    from scorebank.stores.manifest import check_name

    if stage.options.get("strategy") is None:
        raise InvalidArgumentError("key 'strategy' is required, e.g. strategy = \"keep-highest\"")
    make_rule(stage.opt("strategy"), fraction=stage.options.get("keep"), offset=stage.options.get("offset"),
              count=stage.options.get("count"), seed=stage.options.get("seed"), bins=stage.options.get("bins"),
              hard_cutoff=stage.options.get("hard-cutoff"))
    check_name(_manifest_name(stage))
    _check_specs(stage, source)


def _select_done(ctx: Context, stage: Stage) -> bool:
    from scorebank.stores.manifest import store_manifest_names

    path = ctx.store_path(stage)
    return (store_state(path) is not None and _manifest_name(stage) in store_manifest_names(str(path))
            and ctx.file(stage, ".json").is_file())


def _select_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.analysis.selection import select, to_manifest
    from scorebank.stores.manifest import read_store_manifest, record_manifest, store_manifest_names, write_manifest

    path = str(ctx.store_path(stage))
    name = _manifest_name(stage)
    if name in store_manifest_names(path):  # recorded earlier; the file beside it was lost
        manifest = read_store_manifest(path, name)
    else:
        sel = select(path, stage.opt("strategy"), score=stage.options.get("score"), runs=_runs(stage),
                     fraction=stage.options.get("keep"), offset=stage.options.get("offset"),
                     count=stage.options.get("count"), seed=stage.options.get("seed"), bins=stage.options.get("bins"),
                     hard_cutoff=stage.options.get("hard-cutoff"), class_balanced=stage.opt("class-balanced", False),
                     reduce=stage.opt("reduce", "mean"), never_learned=stage.opt("never-learned", "count"))
        manifest = to_manifest(sel, path, name=name)
        record_manifest(path, manifest)
    write_manifest(ctx.file(stage, ".json"), manifest)
    return {"name": manifest.name, "manifest": f"{stage.name}.json", "n_kept": manifest.n_kept,
            "counts_per_class": manifest.counts_per_class}


TRAINING_KEYS = {k: v for k, v in _score_keys().items()
                 if k in ("model", "batchnorm", "init-std", "width", "optimizer", "clip-count", "epochs", "lr",
                          "momentum", "nesterov", "weight-decay", "batch-size", "schedule", "augment",
                          "eval-batch-size")}


def _overrides(stage: Stage) -> dict:
    return {k.replace("-", "_"): v for k, v in stage.options.items() if k in TRAINING_KEYS}


RETRAIN_KEYS = {"manifest": Key(STR, "the select stage whose manifest is retrained"),
                "seeds": Key(SEEDS, "retrain seeds", default=(0, 1, 2, 3)),
                "baseline": Key(STR, "random: also a random subset of the same size"),
                "baseline-seed": Key(INT, "seed of the random baseline"), "budget": Key(STR, "steps or epochs"),
                **TRAINING_KEYS}


def _check_budget(stage: Stage) -> None:
    from scorebank.pipeline.retrain import BUDGETS

    if stage.opt("budget", "steps") not in BUDGETS:
        raise InvalidArgumentError(f"key 'budget' must be one of {', '.join(BUDGETS)}, got {stage.opt('budget')!r}")


def _check_retrain(stage: Stage, source: str) -> None:
    from scorebank.pipeline.retrain import BASELINES

    if stage.options.get("manifest") is None:
        raise InvalidArgumentError("key 'manifest' is required: the name of a select stage")
    if stage.options.get("baseline") not in (None, *BASELINES):
        raise InvalidArgumentError(f"key 'baseline' must be {' or '.join(BASELINES)}, got {stage.opt('baseline')!r}")
    _check_budget(stage)


def _retrain_groups(ctx: Context, stage: Stage) -> tuple[list[str], Stage]:
    """The retrain groups a retrain stage writes, and the select stage it retrains."""
    ref = next(s for s in ctx.experiment.stages if s.name == stage.opt("manifest"))
    name = stage.name
    return [name] + ([name + ".random"] if stage.options.get("baseline") else []), ref


def _groups_done(path: Path, names: Sequence[str], seeds: Sequence[int]) -> bool:
    from scorebank.pipeline.retrain import retrain_groups, retrain_summary

    if store_state(path) is None:
        return False
    have = set(retrain_groups(path))
    if not all(n in have for n in names):
        return False
    return all(set(seeds) <= set(r.seeds) for r in retrain_summary(path, list(names)))


def _retrain_done(ctx: Context, stage: Stage) -> bool:
    """Every group has every seed, and was trained on the manifest the select stage records
    now (a changed selection makes the groups stale: :class:`ConfigMismatchError`)."""
    from scorebank.pipeline.retrain import read_retrain
    from scorebank.stores.manifest import read_store_manifest, store_manifest_names

    names, ref = _retrain_groups(ctx, stage)
    path = ctx.store_path(stage)
    if not _groups_done(path, names, stage.opt("seeds")):
        return False
    if _manifest_name(ref) not in store_manifest_names(str(path)):
        return False
    _, indices, _ = read_retrain(path, stage.name)
    if not np.array_equal(indices, read_store_manifest(str(path), _manifest_name(ref)).indices):
        raise ConfigMismatchError(f"retrain group {stage.name!r} was trained on another subset than select stage "
                                  f"{ref.name!r} records now")
    return True


def _retrain_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.pipeline.retrain import retrain_manifest, retrain_summary
    from scorebank.stores.manifest import read_store_manifest

    _, ref = _retrain_groups(ctx, stage)
    path = str(ctx.store_path(stage))
    manifest = read_store_manifest(path, _manifest_name(ref))
    results = retrain_manifest(path, manifest, stage.opt("seeds"), name=stage.name,
                               baseline=stage.options.get("baseline"), baseline_seed=stage.opt("baseline-seed", 0),
                               overrides=_overrides(stage), budget=stage.opt("budget", "steps"), device=ctx.device,
                               overwrite=stage.name in ctx.rerun, progress=ctx.relay, client=ctx.client,
                               gpus_per_run=ctx.gpus_per_run)
    return {"groups": [r.to_dict() for r in retrain_summary(path, [r.group for r in results])]}


STAGES.add("select", StageKind(SELECT_KEYS, _select_run, _select_done, check=_check_select),
           help="choose a subset by a score and record its manifest (scorebank select)")
STAGES.add("retrain", StageKind(RETRAIN_KEYS, _retrain_run, _retrain_done, check=_check_retrain),
           help="retrain fresh networks on a select stage's manifest (scorebank retrain)")


# ============================================================================= stage kinds: prune-curve
PRUNE_KEYS = {"score": Key(STR, "score spec"), "strategies": Key(STRS, "selection strategies"),
              "prune": Key(FLOATS, "fractions pruned"), "offsets": Key(FLOATS, "window offsets"),
              "keep": Key(FLOAT, "window: fraction kept"), "seeds": Key(SEEDS, "retrain seeds", default=(0, 1, 2, 3)),
              "runs": AVERAGED_KEYS["runs"], "seed": Key(INT, "seed of random and stratified"),
              "class-balanced": Key(BOOL, "per class"), "prefix": Key(STR, "group name prefix"),
              "budget": Key(STR, "steps or epochs"), **TRAINING_KEYS}


def _cells(stage: Stage):
    from scorebank.pipeline.prune_curve import plan_cells

    return plan_cells(stage.opt("strategies", ["keep-highest", "random"]), score=stage.options.get("score"),
                      fractions=stage.options.get("prune"), offsets=stage.options.get("offsets"),
                      window_fraction=stage.options.get("keep"), seed=stage.opt("seed", 0),
                      class_balanced=stage.opt("class-balanced", False), prefix=stage.opt("prefix", stage.name))


def _check_prune(stage: Stage, source: str) -> None:
    from scorebank.analysis.scores import parse_score

    if stage.options.get("score") is None:
        raise InvalidArgumentError("key 'score' is required, e.g. score = \"el2n@5\"")
    parse_score(stage.opt("score"))
    _cells(stage)
    _check_budget(stage)


def _prune_done(ctx: Context, stage: Stage) -> bool:
    _, cells = _cells(stage)
    return _groups_done(ctx.store_path(stage), [c.name for c in cells], stage.opt("seeds")) and \
        ctx.file(stage, ".json").is_file()


def _prune_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.pipeline.prune_curve import plot_curve, prune_curve, write_table

    curve = prune_curve(str(ctx.store_path(stage)), score=stage.opt("score"),
                        strategies=stage.opt("strategies", ["keep-highest", "random"]), seeds=stage.opt("seeds"),
                        fractions=stage.options.get("prune"), offsets=stage.options.get("offsets"),
                        window_fraction=stage.options.get("keep"), runs=_runs(stage), seed=stage.opt("seed", 0),
                        class_balanced=stage.opt("class-balanced", False), prefix=stage.opt("prefix", stage.name),
                        overrides=_overrides(stage), budget=stage.opt("budget", "steps"), device=ctx.device,
                        overwrite=stage.name in ctx.rerun,
                        progress=None if ctx.relay is None else (lambda ev: ctx.relay(ev.event)),
                        client=ctx.client, gpus_per_run=ctx.gpus_per_run)
    write_table(curve, ctx.file(stage, ".csv"), ctx.file(stage, ".json"))
    plot_curve(curve, ctx.file(stage, ".png"))
    return {**curve.to_dict(), "store": ctx.experiment.stores[stage.store]}


STAGES.add("prune-curve", StageKind(PRUNE_KEYS, _prune_run, _prune_done, check=_check_prune),
           help="pruning curve or sliding window: select and retrain over a grid (scorebank prune-curve)")


# ============================================================================= stage kinds: compress, easy-hard
COMPRESS_KEYS = {"run": Key(INT, "scoring run compressed", default=0), "keep": Key(INT, "examples left"),
                 "schedule": Key(STR, "immediate or continuous"), "epochs": Key(INT, "immediate: epochs"),
                 "max-epochs-per-stage": Key(INT, "continuous"), "min-epochs-per-stage": Key(INT, "continuous"),
                 "batch-size": Key(INT, "minibatch size (default full batch)"), "lr": Key(FLOAT, "learning rate"),
                 "momentum": Key(FLOAT, "momentum"), "nesterov": Key(BOOL, "Nesterov"),
                 "weight-decay": Key(FLOAT, "weight decay"), "eval-batch-size": Key(INT, "evaluation batch")}


def _compress_done(ctx: Context, stage: Stage) -> bool:
    from scorebank.pipeline.compress import compression_exists

    path = ctx.store_path(stage)
    return store_state(path) is not None and compression_exists(path, stage.name)


def _compress_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.pipeline.compress import compress, plot_compression, resolve_compress_config
    from scorebank.pipeline.scoring import read_store_config

    path = ctx.store_path(stage)
    kw = {k.replace("-", "_"): v for k, v in stage.options.items()}
    cfg = resolve_compress_config(read_store_config(path), **kw)
    res = compress(str(path), cfg, name=stage.name, device=ctx.device, overwrite=True, progress=ctx.relay)
    traj = res.trajectory
    plot_compression(traj, ctx.file(stage, ".png"), title=f"run {cfg.run}, {cfg.schedule} compression to {cfg.keep}")
    rows = traj.stage_end_rows()
    return {"start": res.start, "stages": [{"examples_left": traj.stage_size[s], "epochs": traj.stage_epochs[s],
                                            "separated": traj.stage_separated[s],
                                            "test_error": traj.test_error[r], "train_error": traj.train_error[r]}
                                           for s, r in enumerate(rows)]}


EASY_HARD_KEYS = {"threshold": Key(FLOAT, "training accuracy threshold"), "run": Key(INT, "scoring run"),
                  "test-fraction": Key(FLOAT, "held-out fraction"), "split-seed": Key(INT, "split seed"),
                  "seeds": Key(SEEDS, "seeds", default=(0,)), "epochs": TRAINING_KEYS["epochs"],
                  "lr": TRAINING_KEYS["lr"], "optimizer": TRAINING_KEYS["optimizer"]}


def _easy_hard_done(ctx: Context, stage: Stage) -> bool:
    from scorebank.pipeline.easyhard import GROUP

    g = ctx.store_path(stage) / GROUP / stage.name / "zarr.json"
    return g.is_file()


def _easy_hard_run(ctx: Context, stage: Stage) -> dict:
    from scorebank.pipeline.easyhard import easy_hard

    res = easy_hard(str(ctx.store_path(stage)), seeds=stage.opt("seeds"), threshold=stage.opt("threshold", 0.5),
                    run=stage.options.get("run"), test_fraction=stage.opt("test-fraction", 0.17),
                    split_seed=stage.opt("split-seed", 0), overrides=_overrides(stage), device=ctx.device,
                    name=stage.name, progress=ctx.relay, client=ctx.client, gpus_per_run=ctx.gpus_per_run)
    mean, gap = res["mean_accuracy"], res["generalization_gap"].mean("seed")
    return {"accuracy": {str(t): {str(e): float(mean.sel(trained_on=t, evaluated_on=e))
                                  for e in mean.evaluated_on.values} for t in mean.trained_on.values},
            "generalization_gap": {str(t): float(gap.sel(trained_on=t)) for t in gap.trained_on.values},
            "part_size": dict(zip(map(str, res.evaluated_on.values), res.part_size.values.tolist())),
            "threshold_epoch": res.attrs["threshold_epoch"]}


HOLDOUT_KEYS = {"folds": Key(INT, "K: each model trains on K-1 folds", default=5),
                "seeds": Key(SEEDS, "holdout seeds", default=(0, 1, 2))}


def _check_holdout(stage: Stage, source: str) -> None:
    from scorebank.pipeline.holdout import MAX_FOLDS

    if not 2 <= stage.opt("folds") <= MAX_FOLDS:
        raise InvalidArgumentError(f"key 'folds' must be 2..{MAX_FOLDS}, got {stage.opt('folds')!r}")


def _holdout_done(ctx: Context, stage: Stage) -> bool:
    """Every seed's every fold is done, in a group made with the stage's K (another K: the
    stage changed, :class:`ConfigMismatchError`)."""
    import zarr

    from scorebank.pipeline.holdout import FOLD_DONE, GROUP, SEED, read_spec

    path = ctx.store_path(stage)
    if store_state(path) is None:
        return False
    spec = read_spec(path)
    if spec is None:
        return False
    if spec.folds != stage.opt("folds"):
        raise ConfigMismatchError(f"the store's holdout group was made with folds = {spec.folds}, "
                                  f"the stage asks for {stage.opt('folds')}")
    group = zarr.open_group(path / GROUP, mode="r")
    done = dict(zip(group[SEED][:].tolist(), group[FOLD_DONE][:].all(axis=1).tolist()))  # seed -> all folds done
    return all(done.get(s, False) for s in stage.opt("seeds"))


def _holdout_run(ctx: Context, stage: Stage) -> dict:
    """K-fold out-of-fold probabilities (scorebank holdout); the numbers: each seed's
    out-of-fold accuracy, the fraction of examples whose held-out argmax is their label."""
    import zarr

    from scorebank.pipeline.holdout import GROUP, PROBABILITY, SEED, holdout
    from scorebank.stores import schema as S

    path = ctx.store_path(stage)
    holdout(str(path), stage.opt("folds"), stage.opt("seeds"), device=ctx.device, overwrite=stage.name in ctx.rerun,
            progress=ctx.relay, client=ctx.client, gpus_per_run=ctx.gpus_per_run)
    group = zarr.open_group(path / GROUP, mode="r")
    labels = np.asarray(zarr.open_array(path / S.LABEL, mode="r")[:])  # (example,)
    position = {int(s): i for i, s in enumerate(group[SEED][:])}
    accuracy = {str(s): float((group[PROBABILITY][position[s]].argmax(axis=1) == labels).mean())  # (example, class)
                for s in stage.opt("seeds")}
    return {"folds": stage.opt("folds"), "out_of_fold_accuracy": accuracy,
            "mean_out_of_fold_accuracy": float(np.mean(list(accuracy.values())))}


STAGES.add("holdout", StageKind(HOLDOUT_KEYS, _holdout_run, _holdout_done, check=_check_holdout),
           help="K-fold out-of-fold probabilities of every example (scorebank holdout)")
STAGES.add("compress", StageKind(COMPRESS_KEYS, _compress_run, _compress_done),
           help="compress a separated run to its smallest margins (scorebank compress)")
STAGES.add("easy-hard", StageKind(EASY_HARD_KEYS, _easy_hard_run, _easy_hard_done),
           help="train on easy and on hard examples, evaluate on both (scorebank easy-hard)")


# ============================================================================= stage kind: report
REPORT_KEYS = {"score": Key(STR, "score of the image grids (default el2n at an early epoch)"),
               "per-class": Key(INT, "images per class and end of the grid")}


def _report_run(ctx: Context, stage: Stage) -> dict:
    page = _write_experiment_report(jsonable(_results_doc(ctx)), ctx.out, ctx.out / REPORT_DIR,
                                    score=stage.options.get("score"), per_class=stage.opt("per-class", 6))
    return {"page": str(page.relative_to(ctx.out))}


def _write_experiment_report(results: dict, out: Path, where: Path, *, score: str | None, per_class: int) -> Path:
    from scorebank.analysis.report import write_report

    stores = {name: out / p for name, p in results.get("stores", {}).items()}  # an absolute p stays
    inputs = {name: report_inputs(path) for name, path in stores.items() if store_state(path) is not None}
    return write_report(where, inputs, results=results, score=score, per_class=per_class)


def experiment_report(out: str | os.PathLike, where: str | os.PathLike, *, score: str | None = None,
                      per_class: int = 6) -> Path:
    """The report of the experiment whose output directory is ``out`` (its ``results.json``
    and stores), written into ``where``; returns the page."""
    p = Path(out) / RESULTS
    try:
        results = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidArgumentError(f"{str(p)!r} is not a results document written by 'scorebank run'") from None
    if not isinstance(results, dict) or not isinstance(results.get("stores"), dict):
        raise InvalidArgumentError(f"{str(p)!r} is not a results document written by 'scorebank run'")
    return _write_experiment_report(results, Path(out), Path(where), score=score, per_class=per_class)


STAGES.add("report", StageKind(REPORT_KEYS, _report_run, None, needs_store=False),
           help="the static HTML report of every store (scorebank report); added last when absent")


def report_inputs(store: str | os.PathLike):
    """What :mod:`scorebank.analysis.report` needs from the pipeline layer for one store:
    the retrain groups' rows (pruning curves, sliding windows, retrains) and a loader of the
    store's training images (the data set its configuration names, in store order)."""
    from scorebank.analysis.report import RetrainCurveRow, StoreInputs
    from scorebank.pipeline.retrain import read_retrain, retrain_groups, retrain_summary

    path = Path(store)
    rows = []
    if path.is_dir():
        for r in retrain_summary(path, retrain_groups(path)):
            _, _, manifest = read_retrain(path, r.group)
            m = manifest or {}
            params = m.get("parameters", {}) or {}
            rows.append(RetrainCurveRow(group=r.group, strategy=str(m.get("strategy", r.source)),
                                        score=m.get("score"), fraction_kept=r.subset_size / r.n_full,
                                        offset=params.get("offset"), accuracies=tuple(r.final_accuracies),
                                        full_data_accuracy=r.full_data_accuracy))

    def images():
        from scorebank.pipeline.datasets import load_dataset
        from scorebank.pipeline.scoring import read_store_config

        cfg = read_store_config(path)
        data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, download=False, limit=cfg.limit)
        return data.train_images

    return StoreInputs(path=str(path), retrain_rows=tuple(rows), images=images if path.is_dir() else None)
