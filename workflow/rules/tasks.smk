# Stage 0: the downstream tasks the workflow generates itself (the CPU configs' fmnist_vtab/* tasks,
# `tocom make-tasks`): one folder per task in the VTAB-1k layout, read back by the real VTAB loader.
# Every job that reads a generated task lists its split files as inputs (`data_input`), so it waits.
GENERATED = set(GRID.generated_datasets())


def task_lists(task):
    """A generated task's VTAB-1k split lists (`task` a name, or the {task} wildcard)."""
    return [run_path(layout.TASK_LIST, task=task, split_file=f) for f in layout.VTAB_SPLIT_FILES.values()]


def data_input(dataset):
    """The split lists of a generated task; nothing for datasets read from their release."""
    return task_lists(dataset.split("/", 1)[1]) if dataset in GENERATED else []


rule make_task:
    output: task_lists("{task}")
    log: job_log("tasks", layout.TASK)
    params:
        launch=f"{sys.executable} -m tocom.cli",
        root=GRID.generated_root,
        args=GRID.task_settings().cli_args(),
    localrule: True
    shell:
        "{params.launch} make-tasks --out {params.root} --tasks {wildcards.task} {params.args} > {log} 2>&1"
