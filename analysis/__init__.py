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
"""

from scorebank.analysis.access import NEVER, completed_runs, open_store, parse_runs, resolve_runs
from scorebank.analysis.correlation import sensitivity_curve, spearman, spearman_matrix
from scorebank.analysis.curves import training_curves
from scorebank.analysis.difficulty import difficulty, threshold_epochs
from scorebank.analysis.difficulty_levels import accuracy_by_difficulty
from scorebank.analysis.distribution import margin_distribution, sorted_margins
from scorebank.analysis.forgetting import ForgettingSummary, forgetting, forgetting_summary
from scorebank.analysis.noise import noise_detection
from scorebank.analysis.overlap import (final_set_retention, margin_overlaps, pairwise_overlap,
                                        smallest_margin_sets)
from scorebank.analysis.scores import (SCORES, ScoreSpec, average_score, average_scores, parse_score,
                                       run_scores, score_quantiles, write_scores_csv)
from scorebank.analysis.selection import STRATEGIES, Selection, make_rule, select, select_indices, to_manifest
from scorebank.analysis.separation import data_separation, final_epochs, final_train_accuracy

__all__ = [
    "NEVER", "SCORES", "STRATEGIES", "ForgettingSummary", "ScoreSpec", "Selection", "accuracy_by_difficulty",
    "average_score", "average_scores", "completed_runs", "data_separation", "difficulty", "final_epochs",
    "final_set_retention", "final_train_accuracy", "forgetting", "forgetting_summary", "make_rule",
    "margin_distribution", "margin_overlaps", "noise_detection", "open_store", "pairwise_overlap",
    "parse_runs", "parse_score", "resolve_runs", "run_scores", "score_quantiles", "select", "select_indices",
    "sensitivity_curve", "smallest_margin_sets", "sorted_margins", "spearman", "spearman_matrix",
    "threshold_epochs", "to_manifest", "training_curves", "write_scores_csv",
]
