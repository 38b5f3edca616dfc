"""What the report scripts share, one concern per module:

    stats     means over seeds with 95 % intervals, gains, the paired test across tasks x seeds
    fmt       numbers and tables as text: Markdown, LaTeX, p-values, "source → target"
    ctx       the run's context (config, tidy tables, the paper's numbers, where outputs go), selecting
              results, and making a script's items
    table     a reproduced table (cells, paired tests, its .md/.tex/.csv), plain tables, stubs
    figure    matplotlib figures, saved with fixed metadata
    builders  what several items share: VTAB-1k rows, group tables, compensation figures, ablation tables

The scripts read result files only: of the tocom package, torch-free modules (`tocom.io`'s atomic writers, so a
killed job leaves no half-written item; `tocom.settings`; `tocom.layout`). Which items exist, who makes them and
what they read: the registry, ../items.py.
"""
