"""Reports over runs, outside the core: `funcml.report.summary` (one table row per run,
summary.csv / summary.md and comparison plots; `experiments/summarize.py` is its CLI) and
`funcml.report.curves` (a run's training curves, which `funcml.trainer` draws when a run ends).

Not imported by `import funcml`: it draws with matplotlib, which the library itself never needs.
"""
