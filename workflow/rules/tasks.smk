# Stage 0: the downstream tasks the workflow generates itself (the CPU configs' fmnist_vtab/* tasks,
# `tocom make-tasks`): one folder per task in the VTAB-1k layout, read back by the real VTAB loader.
# Every job that reads a generated task lists its split files as inputs (`data_input`), so it waits.
TASK_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")   # the VTAB-1k split files
GENERATED = set(GRID.generated_datasets())


def data_input(dataset):
    """The split lists of a generated task; nothing for datasets read from their release."""
    if dataset not in GENERATED:
        return []
    return [f"{GRID.generated_root}/{dataset.split('/', 1)[1]}/{name}" for name in TASK_LISTS]


rule make_task:
    output:
        [f"{GRID.generated_root}/{{task}}/{name}" for name in TASK_LISTS],
    log:
        f"{LOGS}/tasks/{{task}}.log",
    params:
        launch=f"{sys.executable} -m tocom.cli",
        root=GRID.generated_root,
        args=GRID.task_settings().cli_args(),
    wildcard_constraints:
        task=r"[a-z0-9_]+",
    localrule: True
    shell:
        "{params.launch} make-tasks --out {params.root} --tasks {wildcards.task} {params.args} > {log} 2>&1"
