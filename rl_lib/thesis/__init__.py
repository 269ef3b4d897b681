"""Thesis output: the figure style, the Chapter 7 figures (vector PDF) and LaTeX tables.

Everything here reads results files (run dirs, evaluation tables) and writes files under
``thesis_figures/`` and ``latex/generated/``; nothing is typed by hand.
"""

from rl_lib.thesis.figures import checkpoint_timeline, kpi_comparison, learning_curves, training_diagnostics
from rl_lib.thesis.style import label, save_figure, thesis_style
from rl_lib.thesis.tables import baseline_vs_rl_table, kpi_table, numbers_macros

__all__ = [
    "baseline_vs_rl_table", "checkpoint_timeline", "kpi_comparison", "kpi_table", "label",
    "learning_curves", "numbers_macros", "save_figure", "thesis_style", "training_diagnostics",
]  # fmt: skip
