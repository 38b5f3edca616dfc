"""End-to-end test of the SLURM profile against a real SLURM cluster.

Runs the tiny workflow in tests/fixtures/slurm_wf with ``--profile slurm`` (the
bare name, resolved from the repo root through the ``slurm`` -> ``profiles/slurm``
link), checks that every job went through sbatch and succeeded, then runs it
again and checks that nothing is rerun.

Needs a reachable cluster, e.g. the local one from ``workflow/slurm/cluster.sh up``
(see docs/slurm.md). Without one the test is skipped, unless
``TOCOM_REQUIRE_SLURM=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "slurm_wf"
OUTPUTS = ("prepare.txt", "gpu.txt", "summary.txt")
RUN_TIMEOUT = 300  # seconds per snakemake run; normally ~1 minute in total

pytestmark = pytest.mark.slow


def _cluster_unavailable_reason() -> str | None:
    """None if sbatch exists and squeue answers, else why not."""
    if shutil.which("sbatch") is None:
        return "sbatch not found on PATH (install slurm-wlm / slurm-client)"
    if shutil.which("squeue") is None:
        return "squeue not found on PATH"
    try:
        proc = subprocess.run(
            ["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "squeue did not answer within 20 s"
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        return "SLURM cluster not reachable (squeue failed: {}); start one with " "'workflow/slurm/cluster.sh up'".format(
            err[-1] if err else f"exit {proc.returncode}"
        )
    return None


def _require_cluster() -> None:
    """Skip (or, with TOCOM_REQUIRE_SLURM=1, fail) without a usable cluster."""
    reason = _cluster_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("TOCOM_REQUIRE_SLURM") == "1":
        pytest.fail(f"TOCOM_REQUIRE_SLURM=1 but no usable SLURM cluster: {reason}")
    pytest.skip(reason)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # never let an enclosing SLURM allocation leak into the test's submissions
    for k in list(env):
        if (k.startswith("SLURM_") and k != "SLURM_CONF") or k.startswith(("SBATCH_", "SRUN_")):
            del env[k]
    # the jobs run `<this python> -m snakemake`; keep its bin dir first on PATH
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _snakemake(workdir: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "slurm",  # bare name: resolved from the cwd (repo root) -> ./slurm
        "--snakefile",
        str(FIXTURE / "Snakefile"),
        "--directory",
        str(workdir),
        # Test-only speed-ups; the profile's values are meant for real clusters.
        # A job here takes ~7 s (two snakemake start-ups); the plugin adds 10 s
        # to the interval after every check that finds nothing finished.
        "--slurm-init-seconds-before-status-checks",
        "8",
        "--seconds-between-status-checks",
        "8",
        "--latency-wait",
        "5",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    (workdir / f"snakemake-{time.time_ns()}.log").write_text(
        f"$ {' '.join(cmd)}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


def _fields(path: Path) -> dict[str, str]:
    first = path.read_text().splitlines()[0]
    return dict(kv.split("=", 1) for kv in first.split())


def test_profile_slurm_runs_every_job_through_sbatch(tmp_path):
    _require_cluster()

    # 1st run: everything is submitted, `prepare` fails once and is retried
    first = _snakemake(tmp_path)
    log = first.stdout + first.stderr
    assert first.returncode == 0, f"snakemake failed:\n{log[-6000:]}"
    assert re.search(r"Using profiles? slurm", log), "bare --profile slurm was not resolved"
    assert "failing attempt 1 on purpose" in log or "Trying to restart job" in log

    fields = {name: _fields(tmp_path / name) for name in OUTPUTS}
    job_ids = [fields[name]["job"] for name in OUTPUTS]
    assert all(re.fullmatch(r"\d+", j) for j in job_ids), f"not SLURM job ids: {job_ids}"
    assert len(set(job_ids)) == len(job_ids), f"jobs shared a SLURM job: {job_ids}"
    assert fields["prepare.txt"]["attempt"] == "2", "retry did not happen through SLURM"
    assert fields["gpu.txt"]["gpus_on_node"] == "1", "GPU rule did not get a GPU"

    # SLURM itself saw the jobs finish successfully (squeue keeps finished jobs
    # for MinJobAge seconds; on clusters with a short MinJobAge they may be gone)
    states = subprocess.run(
        ["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%T"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    seen = dict(line.split("|", 1) for line in states.stdout.split() if "|" in line)
    assert all(state == "COMPLETED" for state in seen.values()), seen

    # 2nd run: nothing to do, no submission, outputs untouched
    before = {name: (tmp_path / name).stat().st_mtime_ns for name in OUTPUTS}
    second = _snakemake(tmp_path)
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, f"second run failed:\n{log2[-6000:]}"
    assert "Nothing to be done" in log2, f"second run was not a no-op:\n{log2[-3000:]}"
    assert "Submitted job" not in log2 and "sbatch" not in log2
    assert before == {name: (tmp_path / name).stat().st_mtime_ns for name in OUTPUTS}


def test_smoke_pipeline_through_the_slurm_profile(tmp_path):
    """The real DAG (config/smoke.yaml) via `snakemake --profile slurm`: every job is an sbatch job
    that SLURM reports COMPLETED, and the results are the same tables the local run makes."""
    _require_cluster()
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", "--configfile", "config/smoke.yaml",
           "--directory", str(tmp_path), "--slurm-init-seconds-before-status-checks", "8",
           "--seconds-between-status-checks", "8", "--latency-wait", "5"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    (tmp_path / "snakemake.log").write_text(log)
    assert proc.returncode == 0, f"snakemake failed:\n{log[-6000:]}"
    job_ids = re.findall(r"submitted with SLURM jobid (\d+)", log)
    local = len(re.findall(r"^localrule \w+:", log, re.M))
    total = int(re.search(r"^total\s+(\d+)$", log, re.M).group(1))
    # one sbatch job per non-local job (the profile groups nothing: see profiles/slurm/config.yaml)
    assert not re.findall(r"Group job \w+ \(jobs", log)
    assert len(job_ids) == total - local and len(set(job_ids)) == len(job_ids), (len(job_ids), total, local)
    states = subprocess.run(["squeue", "-h", "--states=all", "-j", ",".join(job_ids), "-o", "%i|%T"],
                            capture_output=True, text=True, env=_env(), timeout=30)
    seen = dict(line.split("|", 1) for line in states.stdout.split() if "|" in line)
    assert seen and all(state == "COMPLETED" for state in seen.values()), seen
    from test_workflow import check_smoke_results

    check_smoke_results(tmp_path / "results/smoke")
