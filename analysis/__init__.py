"""scorebank.analysis: lazy, streaming analyses of score stores (xarray + Dask).

Every function takes a store path or an opened Dataset and ``scheduler=None`` (anything
``dask.compute(scheduler=...)`` accepts, a ``distributed.Client`` included; never creates
one), and returns xarray objects.  One module per idea:

=================  =====================================================================
registry           the score registry: every score's syntax, hard end, variables, computation
scores             score specs ``name@epoch``, scores averaged over runs, summary, CSV
forgetting         forgetting events (Toneva et al.; Data Diet) and their summary
correlation        Spearman matrices and the run-count sensitivity curve (Data Diet D.1)
separation         data-separation epoch (margins paper)
overlap            overlaps of smallest-margin sets (margins paper Figs. 6, 8, 9)
distribution       margin-distribution AUC and small-margin counts (margins paper 4.2)
difficulty         easy/hard difficulty (Coherent Gradients at scale)
difficulty_levels  training accuracy per difficulty level (Coherent Gradients Fig. 5a)
curves             accuracy/loss per epoch, pristine vs corrupt labels (Coherent Gradients Fig. 3)
noise              corrupted-label detection: ROC AUC, precision (Data Diet Sec. 4, E.2)
selection          subset selection strategies behind ``scorebank select``
plots              figures (matplotlib Agg)
bench              synthetic store and benchmark
=================  =====================================================================

Importing this package is cheap: the names below are imported from their module on first
use (PEP 562), so a command needing one analysis does not pay for the others' imports.
"""

from __future__ import annotations

import importlib

#: public name -> the module of scorebank.analysis defining it
_EXPORTS = {
    **dict.fromkeys(('NEVER', 'completed_runs', 'open_store', 'parse_runs', 'resolve_runs'), "access"),
    **dict.fromkeys(('sensitivity_curve', 'spearman', 'spearman_matrix'), "correlation"),
    **dict.fromkeys(('training_curves',), "curves"),
    **dict.fromkeys(('difficulty', 'threshold_epochs'), "difficulty"),
    **dict.fromkeys(('accuracy_by_difficulty',), "difficulty_levels"),
    **dict.fromkeys(('margin_distribution', 'sorted_margins'), "distribution"),
    **dict.fromkeys(('ForgettingSummary', 'forgetting', 'forgetting_summary'), "forgetting"),
    **dict.fromkeys(('noise_detection',), "noise"),
    **dict.fromkeys(('final_set_retention', 'margin_overlaps', 'pairwise_overlap', 'smallest_margin_sets'), "overlap"),
    **dict.fromkeys(('SCORES', 'ScoreSpec', 'average_score', 'average_scores', 'parse_score', 'run_scores', 'score_quantiles', 'write_scores_csv'), "scores"),
    **dict.fromkeys(('STRATEGIES', 'Selection', 'make_rule', 'select', 'select_indices', 'to_manifest'), "selection"),
    **dict.fromkeys(('data_separation', 'final_epochs', 'final_train_accuracy'), "separation"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scorebank.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"scorebank.analysis.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


# functions named like their module: bound now, else importing the module (as other
# modules do) would leave the package attribute pointing at the module
from scorebank.analysis.difficulty import difficulty  # noqa: E402, F401
from scorebank.analysis.forgetting import forgetting  # noqa: E402, F401
