"""What the report scripts share, one concern per module:

    stats     means over seeds with 95 % intervals, gains, the paired test across tasks x seeds
    fmt       numbers and tables as text: Markdown, LaTeX, p-values, "source → target"
    ctx       the run's context (config, tidy tables, the paper's numbers, where outputs go), selecting
              results, and running a script's items
    table     a reproduced table (cells, paired tests, its .md/.tex/.csv), plain tables, stubs
    figure    matplotlib figures, saved with fixed metadata
    builders  the tables and figures several items share (VTAB-1k rows, group tables, compensation
              figures, ablation tables)

Every report script reads result files only: the tidy tables under results/<name>/tables/, the config
that ran, and the reference files. Of the tocom package only torch-free modules are imported: `tocom.io`
(every file is written through its atomic, umask-honouring writers, so a killed report job leaves no
half-written item), `tocom.settings` (stage defaults, method names) and `tocom.layout` (where files live).
Which items exist, who makes them and what they read is the registry, ../items.py.
"""
