"""Reports over finished runs, outside the core: `funcml.report.summary` (one table row per
run, summary.csv / summary.md and comparison plots; `experiments/summarize.py` is its CLI).

Not imported by `import funcml`: it draws with matplotlib, which the library itself never needs.
"""
