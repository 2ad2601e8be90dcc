"""A bad setting is a configuration error that names the variable, the value given and the form expected:
the CLI as a subprocess, 80 columns, output piped (as in a CI log), exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "promptdrop.cli"]
KEY = "AIzaSy-not-a-real-key-0123456789"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "PROMPTDROP_MAX_COST_USD",
            "-5",
            "PROMPTDROP_MAX_COST_USD='-5': expected a non-negative amount in USD such as 25 or 12.50",
        ),
        (
            "PROMPTDROP_MAX_COST_USD",
            "$25",
            "PROMPTDROP_MAX_COST_USD='$25': expected a non-negative amount in USD such as 25 or 12.50",
        ),
        (
            "PROMPTDROP_CACHE",
            "maybe",
            "PROMPTDROP_CACHE='maybe': expected on or off (also true/false, yes/no, 1/0)",
        ),
        ("PROMPTDROP_BACKEND", "gemni", "PROMPTDROP_BACKEND='gemni': expected gemini, emulator or vertex"),
        (
            "PROMPTDROP_JOB_DEADLINE",
            "forever",
            "PROMPTDROP_JOB_DEADLINE='forever': expected a duration in seconds, or a number with s, m, h or d, "
            "such as 90, 15m or 36h",
        ),
    ],
    ids=["negative-cap", "dollar-cap", "cache-maybe", "backend-typo", "deadline-forever"],
)
def test_a_bad_setting_names_the_variable_the_value_and_the_form_expected(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "COLUMNS": "80",
        "PROMPTDROP_HOME": str(tmp_path / "home"),
        "GEMINI_API_KEY": KEY,
        variable: value,
    }
    done = subprocess.run(
        [*CLI, "status"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == f"configuration error: {message}"  # whole, on one line
    assert KEY not in done.stdout + done.stderr
    assert not (tmp_path / "home").exists()  # nothing was created on a bad configuration
