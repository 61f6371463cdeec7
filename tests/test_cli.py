"""The ``validate`` command: in process through click and ``main``, and as a real subprocess."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lepton_search import __version__
from lepton_search.cli import EXIT_ALL_FAILED, EXIT_ERROR, cli, main
from lepton_search.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.toml"

# (id, text in the quickstart, replacement, what stderr must say)
BAD_STUDIES = [
    ("mistyped-key", "[budget]", "[budgt]", ["budgt: unknown key", "Did you mean 'budget'?"]),
    (
        "pruning-ratio",
        "ratio = [0.1, 0.75]",
        "ratio = [0.1, 1.5]",
        ["space.pruning.ratio = [0.1, 1.5]", "0 < low <= high <= 0.9"],
    ),
    ("negative-seed", "seed = 0", "seed = -1", ["study.seed = -1", "greater than or equal to 0"]),
    ("boolean-n-trials", "n_trials = 20", "n_trials = true", ["budget.n_trials = True", "valid integer"]),
    ("string-n-trials", "n_trials = 20", 'n_trials = "3"', ["budget.n_trials = '3'", "valid integer"]),
    (
        "unknown-task",
        'task = "digits-cnn"',
        'task = "digits-rnn"',
        ["study.task = 'digits-rnn'", "Known tasks: digits-cnn"],
    ),
]
BAD_IDS = [case[0] for case in BAD_STUDIES]
BAD_CASES = [case[1:] for case in BAD_STUDIES]


def _bad_study(tmp_path: Path, old: str, new: str) -> Path:
    text = QUICKSTART.read_text()
    assert old in text, f"{old!r} is no longer in the quickstart study; update this test"
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1))
    return path


# ---------------------------------------------------------------------------------------------
# In process
# ---------------------------------------------------------------------------------------------


def test_validate_ok_with_cli_runner() -> None:
    result = CliRunner().invoke(cli, ["validate", str(QUICKSTART)])
    assert result.exit_code == 0, result.output
    first, *decided = result.output.splitlines()
    assert first == (
        f"{QUICKSTART}: OK (study 'digits-quickstart', task 'digits-cnn', objectives "
        "['accuracy', 'latency_ms'], sampler 'tpe', 20 trials)"
    )
    assert decided[0].startswith("Decided for this CPU (")  # the hardware decisions: tests/test_cli_hardware.py


def test_version_and_help_with_cli_runner() -> None:
    runner = CliRunner()
    version = runner.invoke(cli, ["--version"])
    assert version.exit_code == 0
    assert version.output.strip() == f"lepton-search, version {__version__}"
    help_result = runner.invoke(cli, ["validate", "--help"])
    assert help_result.exit_code == 0
    assert "Check STUDY_FILE without running it" in help_result.output


def test_cli_group_itself_does_not_catch_config_errors(tmp_path: Path) -> None:
    """Only ``main`` turns errors into messages; the click group lets them through."""
    path = _bad_study(tmp_path, "[budget]", "[budgt]")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert isinstance(result.exception, ConfigError)
    assert "Did you mean 'budget'?" in str(result.exception)


def test_main_validate_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    captured = capsys.readouterr()
    assert "OK (study 'digits-quickstart'" in captured.out
    assert captured.err == ""


@pytest.mark.parametrize(("old", "new", "expected"), BAD_CASES, ids=BAD_IDS)
def test_main_reports_bad_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, expected: list[str]
) -> None:
    path = _bad_study(tmp_path, old, new)
    assert main(["validate", str(path)]) == EXIT_ERROR == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"Error: {path} is not a valid study file:")
    for part in expected:
        assert part in captured.err
    assert "Traceback" not in captured.err


def test_main_with_debug_raises(tmp_path: Path) -> None:
    path = _bad_study(tmp_path, "[budget]", "[budgt]")
    with pytest.raises(ConfigError, match="Did you mean 'budget'"):
        main(["--debug", "validate", str(path)])


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["validate", str(missing)]) == 1
    assert f"Study file {str(missing)!r} does not exist" in capsys.readouterr().err


def test_main_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert "Missing argument 'STUDY_FILE'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# As a subprocess: what a user sees, and how long they wait
# ---------------------------------------------------------------------------------------------


def _python(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "lepton_search", *args], capture_output=True, text=True, cwd=cwd, timeout=60
    )
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def warm_imports(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One untimed run, so that the timed ones measure the command and not a cold disk cache."""
    proc, _ = _python("validate", str(QUICKSTART), cwd=tmp_path_factory.mktemp("warm"))
    assert proc.returncode == 0, proc.stderr


@pytest.mark.usefixtures("warm_imports")
@pytest.mark.parametrize(("old", "new", "expected"), BAD_CASES, ids=BAD_IDS)
def test_subprocess_validate_bad_study(tmp_path: Path, old: str, new: str, expected: list[str]) -> None:
    path = _bad_study(tmp_path, old, new)
    proc, elapsed = _python("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    for part in expected:
        assert part in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 2.0, f"validate took {elapsed:.2f} s"


@pytest.mark.usefixtures("warm_imports")
def test_subprocess_validate_bad_study_with_debug(tmp_path: Path) -> None:
    path = _bad_study(tmp_path, "[budget]", "[budgt]")
    proc, elapsed = _python("--debug", "validate", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "lepton_search.errors.ConfigError" in proc.stderr
    assert "Did you mean 'budget'?" in proc.stderr
    assert elapsed < 2.0, f"validate --debug took {elapsed:.2f} s"


@pytest.mark.usefixtures("warm_imports")
def test_subprocess_validate_ok(tmp_path: Path) -> None:
    proc, elapsed = _python("validate", str(QUICKSTART), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "OK (study 'digits-quickstart'" in proc.stdout
    assert elapsed < 2.0, f"validate took {elapsed:.2f} s"


def test_validate_imports_no_heavy_frameworks(tmp_path: Path) -> None:
    """The promise behind the 2-second budget: validation never imports torch, Ray or ONNX Runtime."""
    code = (
        "import sys\n"
        "from lepton_search.cli import main\n"
        f"assert main(['validate', {str(QUICKSTART)!r}]) == 0\n"
        "print(sorted(m for m in ('torch', 'ray', 'onnxruntime', 'onnx') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------------------------
# Exit codes of `run` that do not need Ray: the driver is replaced by a stand-in.


def test_run_in_which_every_trial_failed_exits_with_its_own_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lepton_search.search as search
    from lepton_search.search._study import RunSummary

    def all_failed(spec: object, **kwargs: object) -> RunSummary:
        return RunSummary(study_name="quickstart", failed=3, failures=["#0 int8: TaskError: boom"] * 3)

    monkeypatch.setattr(search, "run_study", all_failed)
    code = main(["run", str(QUICKSTART), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_ALL_FAILED == 5
    assert "all 3 trials of this run failed" in err and "TaskError: boom" in err


def test_sys_exit_from_user_code_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import lepton_search.search as search

    def exits(spec: object, **kwargs: object) -> None:
        sys.exit(0)

    monkeypatch.setattr(search, "run_study", exits)
    code = main(["run", str(QUICKSTART), "--no-progress"])
    assert code == EXIT_ERROR
    assert "called sys.exit(0)" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "shown"), [([], False), (["--verbose"], True)], ids=["quiet", "verbose"])
def test_optuna_info_logs_appear_only_with_verbose(tmp_path: Path, flags: list[str], shown: bool) -> None:
    # A command that creates a study, as `run` does: Optuna logs "A new study created" at INFO.
    code = (
        "import optuna\n"
        "from lepton_search.cli import cli\n"
        "@cli.command('probe')\n"
        "def probe():\n"
        "    optuna.create_study(storage='sqlite:///probe.db', study_name='probe')\n"
        f"cli({[*flags, 'probe']!r}, standalone_mode=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ("A new study created" in proc.stderr) is shown, proc.stderr
