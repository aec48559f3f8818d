"""bench/gpu_run.sh, the prepared GPU run: its steps in issue 24's order, the first call's caps within
one device call, and the deadline and --resume logic (on the dry run's stand-ins). CI runs the whole
dry run (.ci/run); these tests check the script's own bookkeeping in seconds."""

import os
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
SCRIPT = os.path.join(ROOT, "bench", "gpu_run.sh")
ORDER = ["env", "deps", "build", "diag", "tests", "memcheck", "racecheck", "synccheck", "initcheck",
         "e2e-llava", "e2e-video", "e2e-qwen", "bench"]


@pytest.fixture
def logs(tmp_path):
    return tmp_path / "logs"


def run(logs, *args, **env):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "DRY_RUN_LOGS": str(logs), **env})


def record(logs) -> dict[str, str]:
    lines = (logs / "steps.tsv").read_text().splitlines()[1:]
    return {line.split("\t")[0]: line.split("\t")[1] for line in lines}


def test_steps_in_priority_order_and_the_first_call_fits_one_device_call(logs):
    listed = run(logs, "--list")
    assert listed.returncode == 0, listed.stderr
    budgets = {line.split()[0]: int(line.split()[1]) for line in listed.stdout.splitlines()}
    assert list(budgets) == ORDER
    assert sum(budgets[s] for s in ORDER[:5]) <= 560 < 600  # env..tests: the first call, within the tool's 10 minutes


def test_a_step_whose_budget_does_not_fit_is_not_started(logs):
    done = run(logs, "--dry-run", CALL_SECONDS="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert record(logs) == {step: "not started" for step in ORDER}


def test_resume_skips_what_passed_and_reruns_the_rest(logs):
    first = run(logs, "--dry-run", SKIP=" ".join(s for s in ORDER if s != "racecheck"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert record(logs) == {"racecheck": "ok"}
    again = run(logs, "--dry-run", "--resume", SKIP=" ".join(s for s in ORDER if s not in ("env", "racecheck")))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "== racecheck: ok in an earlier call" in again.stdout
    assert list(record(logs).items()) == [("racecheck", "ok"), ("env", "ok")]


def test_a_failing_step_fails_the_run_and_the_record_says_so(logs, tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\nexit 7\n")
    broken.chmod(0o755)
    done = run(logs, "--dry-run", SKIP=" ".join(s for s in ORDER if s != "bench"), PYTHON=str(broken))
    assert done.returncode == 7
    assert record(logs) == {"bench": "FAILED (7)"}
