"""The command line: a thin layer over ``search``. Errors are caught in one place (:func:`main`).

Exit codes: 0 success, 1 a LeptonSearchError (bad input, storage, failed run), 2 usage error,
3 and 4 from ``nightly`` (a regression, a study's run failed), 5 a ``run`` in which every trial
failed, 130 interrupted.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

import lepton_search
from lepton_search.errors import LeptonSearchError

EXIT_ERROR = 1
#: ``run`` evaluated trials and every one of them failed (the reasons are printed).
EXIT_ALL_FAILED = 5
EXIT_INTERRUPTED = 130

storage_option = click.option("--storage", default=None, help="Storage URL; overrides [study].storage.")
artifacts_option = click.option(
    "--artifacts",
    default=None,
    type=click.Path(file_okay=False),
    help="Artifact directory; overrides [study].artifacts.",
)
study_argument = click.argument("study_file", type=click.Path(dir_okay=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(lepton_search.__version__, prog_name="lepton-search")
@click.option("--debug", is_flag=True, help="Show full tracebacks.")
@click.option("-v", "--verbose", is_flag=True, help="Show the INFO logs of lepton-search and its libraries (Optuna).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Search quantization, pruning and distillation jointly for the Pareto frontier of
    accuracy, latency and cost."""
    ctx.obj = {"debug": debug}
    import logging

    import optuna

    # Optuna logs every study load at INFO; our own output says what happened. Optuna resets its
    # logger's level when it first logs, so the level is set through its own call.
    optuna.logging.set_verbosity(logging.INFO if verbose else logging.WARNING)
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@cli.command()
@study_argument
@storage_option
@click.option("--offline", is_flag=True, help="Skip the checks that reach the storage (a database server).")
def validate(study_file: str, storage: str | None, offline: bool) -> None:
    """Check STUDY_FILE without running it: the file, the space on this CPU, and what `run` would
    refuse at once (the sampler on this space, the task's module, the storage, warm-start studies)."""
    from lepton_search.search import Locations, load_study_file, preflight
    from lepton_search.spaces import SpaceHardware

    spec = load_study_file(study_file)
    hardware = SpaceHardware.detect()
    space = spec.space.for_hardware(hardware)  # raises ConfigError with the reason if nothing is left here
    preflight(spec, Locations.resolve(spec, storage).storage_url, offline=offline)
    click.echo(
        f"{study_file}: OK (study {spec.study.name!r}, task {spec.study.task!r}, objectives "
        f"{spec.objective_names}, sampler {spec.sampler.name!r}, {spec.budget.n_trials} trials)"
    )
    report = space.hardware_report()
    if report:
        click.echo(f"Decided for this CPU ({hardware.description}):")
        for line in report:
            click.echo(f"  - {line}")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@cli.command()
@study_argument
@click.option("--n-trials", type=click.IntRange(min=1), default=None, help="Total trials the study should hold.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Trials evaluated at once.")
@storage_option
@artifacts_option
@click.option("--ray-address", default=None, help="Join an existing Ray cluster (HOST:PORT).")
@click.option("--no-progress", is_flag=True, help="Print one line per trial instead of a progress bar.")
@click.pass_context
def run(
    ctx: click.Context,
    study_file: str,
    n_trials: int | None,
    workers: int | None,
    storage: str | None,
    artifacts: str | None,
    ray_address: str | None,
    no_progress: bool,
) -> None:
    """Run STUDY_FILE, or continue it where the last run stopped."""
    from lepton_search.search import ProgressReporter

    study = lepton_search.load(study_file, storage=storage, artifacts=artifacts)
    console = _console()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    total = n_trials if n_trials is not None else study.spec.budget.n_trials
    with ProgressReporter(console, total=total, plain=no_progress) as reporter:
        summary = study.run(n_trials=n_trials, workers=workers, ray_address=ray_address, on_event=reporter)
    console.print(
        f"Run finished in {summary.elapsed_s:.0f} s: {summary.completed} completed, "
        f"{summary.failed} failed"
        + (f", {summary.orphans_requeued} orphaned trials re-queued" if summary.orphans_requeued else "")
        + (f", {summary.duplicates} repeated proposals served from the cache" if summary.duplicates else "")
    )
    if summary.stopped:
        console.print(f"  [yellow]stopped early[/] {summary.stopped}", markup=True, highlight=False)
    for line in summary.failures[:10]:
        console.print(f"  [yellow]failed[/] {line}", markup=True, highlight=False)
    if summary.failed and not summary.completed:
        console.print(
            f"Error: all {summary.failed} trials of this run failed (reasons above); exit code {EXIT_ALL_FAILED}.",
            markup=False,
            highlight=False,
        )
        ctx.exit(EXIT_ALL_FAILED)
    _print_frontier(study)


def _print_frontier(study: Any, *, grouped: bool = True) -> None:
    from rich.console import Console

    from lepton_search.search import frontier_table

    data = study.frontier_json()
    console = Console()
    console.print(frontier_table(data, grouped=grouped, width=console.width))


@cli.command("frontier")
@study_argument
@storage_option
@artifacts_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option(
    "--all", "show_all", is_flag=True, help="One row per non-dominated trial, ties not grouped (the table only)."
)
def frontier_command(study_file: str, storage: str | None, artifacts: str | None, fmt: str, show_all: bool) -> None:
    """Print the Pareto frontier of STUDY_FILE's study: one row per tie group, led by its simplest
    configuration (the JSON holds both the groups and every non-dominated trial)."""

    study = lepton_search.load(study_file, storage=storage, artifacts=artifacts)
    if fmt == "json":
        click.echo(json.dumps(study.frontier_json(), indent=2))
    else:
        _print_frontier(study, grouped=not show_all)


@cli.command()
@study_argument
@storage_option
@artifacts_option
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), default=None, help="HTML file; default <study>-report.html."
)
def report(study_file: str, storage: str | None, artifacts: str | None, output: str | None) -> None:
    """Write the HTML report of STUDY_FILE's study."""

    path = lepton_search.report(study_file, output, storage=storage, artifacts=artifacts)
    click.echo(f"Wrote {path}")


@cli.command()
@click.option("--storage", required=True, help="Storage URL of the studies to show.")
@artifacts_option
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Interface to bind; keep loopback unless behind a proxy."
)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def dashboard(storage: str, artifacts: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study storage and artifact store."""
    from lepton_search.search import serve_dashboard

    serve_dashboard(storage, artifacts, host=host, port=port)


@cli.command()
@study_argument
@storage_option
@artifacts_option
@click.option("--trial", "trial_number", type=int, required=True, help="Trial number (see `frontier`).")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Directory to write into.")
def export(study_file: str, storage: str | None, artifacts: str | None, trial_number: int, output: str) -> None:
    """Write a trial's ONNX model and its config to a directory."""

    written = lepton_search.export(study_file, trial_number, output, storage=storage, artifacts=artifacts)
    for path in written:
        click.echo(f"Wrote {path}")


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="A config.json.")
@click.option("-o", "--output", type=click.Path(file_okay=False), required=True, help="Directory to write into.")
@click.option(
    "--task",
    default=None,
    help="Task reference (built-in name or package.module:factory); required, never read from trial.json.",
)
@click.option(
    "--task-options", default=None, help="Task options as a JSON object; default: from trial.json for the same task."
)
@click.option(
    "--seed", type=int, default=None, help="Compression seed; default: from trial.json for the same task, else 0."
)
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    default="lepton-artifacts/cache",
    show_default=True,
    help="Where the task's teacher is cached (trained there on first use).",
)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Torch and ORT threads.")
def compress(
    config_path: str,
    output: str,
    task: str | None,
    task_options: str | None,
    seed: int | None,
    cache: str,
    threads: int,
) -> None:
    """Rebuild a compressed model from a config (as written by `export`), outside any study."""
    from lepton_search.errors import ConfigError
    from lepton_search.objectives import RebuildRecipe, rebuild

    options = None
    if task_options is not None:
        try:
            options = json.loads(task_options)
        except ValueError as e:
            raise ConfigError(
                f"--task-options {task_options!r} is not JSON ({e}); pass an object such as '{{}}'."
            ) from e
        if not isinstance(options, dict):
            raise ConfigError(f"--task-options must be a JSON object, got {task_options!r}.")
    recipe = RebuildRecipe.from_files(Path(config_path), task=task, task_options=options, seed=seed)
    with _console().status(f"Compressing {recipe.task} with {recipe.config.describe()} ..."):
        built = rebuild(recipe, Path(output), Path(cache), threads=threads)
    metric = built.summary["metric"]
    click.echo(
        f"{built.summary['label']}: metric {metric['validation']:.4f} (validation), {metric['test']:.4f} (test), "
        f"{built.summary['size_bytes'] / 1e6:.2f} MB, sha256 {built.summary['sha256'][:16]}"
    )
    for path in (built.model_path, built.config_path, built.summary_path):
        click.echo(f"Wrote {path}")


@cli.command()
@click.argument("path", type=click.Path(exists=False))
@storage_option
@artifacts_option
@click.option("--date", "run_date", default=None, help="The night's date (YYYY-MM-DD); default today.")
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="nightly-reports",
    show_default=True,
    help="Where the dated HTML and JSON reports go.",
)
@click.option("--ray-address", default=None, help="Join an existing Ray cluster (HOST:PORT).")
@click.pass_context
def nightly(
    ctx: click.Context,
    path: str,
    storage: str | None,
    artifacts: str | None,
    run_date: str | None,
    out_dir: str,
    ray_address: str | None,
) -> None:
    """Extend each study under PATH, re-measure its frontier and report drift.

    PATH is a folder of study files (e.g. studies/nightly/) or one study file with a [nightly]
    section. Exit codes: 0 no regression, 3 a frontier regressed, 4 a study's run failed.
    """
    from lepton_search.search import ProgressReporter, run_nightly

    if run_date is not None:
        try:
            import datetime as dt

            dt.date.fromisoformat(run_date)
        except ValueError:
            raise click.BadParameter(f"{run_date!r} is not a date like 2026-11-23.", param_hint="--date") from None
    console = _console()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    with ProgressReporter(console, total=None, plain=True) as reporter:
        code, outcomes = run_nightly(
            Path(path),
            run_date=run_date,
            out_dir=Path(out_dir),
            storage=storage,
            artifacts=artifacts,
            ray_address=ray_address,
            on_event=reporter,
        )
    for o in outcomes:
        line = f"{o.study}: {o.status}" + (" (already ran tonight)" if o.already_ran else f", +{o.added_trials} trials")
        if o.error:
            line += f": {o.error}"
        console.print(line, markup=False, highlight=False)
        for r in o.regressions:
            console.print(
                f"  REGRESSION trial {r['number']} {r['label']}: {r['previous_median_ms']:.4g} ms -> "
                f"{r['median_ms']:.4g} ms ({r['slowdown']:.2f}x, tolerance {r['tolerance']:.0%})",
                markup=False,
                highlight=False,
            )
        for skipped in o.not_compared:
            console.print(
                f"  not compared: trial {skipped['number']} {skipped['label']}: {skipped['reason']}",
                markup=False,
                highlight=False,
            )
        for report in o.reports:
            console.print(f"  wrote {report}", markup=False, highlight=False)
    ctx.exit(code)


def _noise_band(ctx: click.Context, param: click.Parameter, value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        band = float(value)
    except ValueError:
        band = -1.0
    if not 0.0 <= band < 1.0:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a number in [0, 1) such as 0.05.")
    return band


def _dims(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict[str, int]:
    from lepton_search.objectives import parse_dims

    try:
        return parse_dims(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from e


@cli.command()
@click.argument("candidate", type=click.Path(dir_okay=False))
@click.option(
    "--baseline", type=click.Path(dir_okay=False), default=None, help="Model to compare with, interleaved A/B."
)
@click.option("--backend", default=None, help="Latency backend; default onnxruntime-cpu for .onnx, torch-cpu for .pt2.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="Intra-op threads.")
@click.option("--sessions", type=click.IntRange(min=2), default=5, show_default=True, help="Fresh sessions per model.")
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Size of a dynamic first dimension."
)
@click.option(
    "--dim",
    "dims",
    multiple=True,
    metavar="NAME=SIZE",
    callback=_dims,
    help="Size of a dynamic dimension, by its ONNX name or as INPUT:AXIS (repeatable).",
)
@click.option(
    "--noise-band",
    default=None,
    metavar="X|auto",
    callback=_noise_band,
    help="Noise band of the verdict, or 'auto' to calibrate it with A/A runs of the baseline. [default: 0.05]",
)
@click.option(
    "--aa-runs",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Calibration runs before the measurement: A/A runs of the baseline (they calibrate --noise-band auto), "
    "or runs of the candidate alone. They give the re-run interval (rerun_ci_ms); 0 skips them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(
    candidate: str,
    baseline: str | None,
    backend: str | None,
    threads: int,
    sessions: int,
    batch_size: int,
    dims: dict[str, int],
    noise_band: float | str | None,
    aa_runs: int,
    as_json: bool,
) -> None:
    """Measure CANDIDATE's latency (against --baseline) with the study's protocol."""
    from rich.console import Console

    from lepton_search.objectives import bench_table

    result = lepton_search.bench(
        candidate,
        baseline,
        backend=backend,
        threads=threads,
        sessions=sessions,
        batch_size=batch_size,
        dims=dims,
        noise_band=noise_band,  # type: ignore[arg-type]
        aa_runs=aa_runs,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    console = Console()
    for renderable in bench_table(result):
        console.print(renderable)


def _os_error_message(e: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to check."""
    import errno

    what = e.strerror or type(e).__name__
    paths = " -> ".join(repr(str(p)) for p in (e.filename, e.filename2) if p is not None)
    if e.errno == errno.EADDRINUSE:
        return f"{what}: the port is taken by another process. Pass another --port, or stop that process."
    if e.errno == errno.ENOSPC:
        return f"{what}{': ' + paths if paths else ''}. Free some space or write elsewhere."
    hint = " Check that the path exists and is writable." if paths else " Rerun with --debug for the traceback."
    return f"{what}{': ' + paths if paths else ''}.{hint}"


def _scrubbed(message: str, argv: list[str]) -> str:
    """``message`` without the secrets of any ``--storage`` URL on the command line (a last line of
    defence: the storage layer masks URLs itself)."""
    from lepton_search.storage import scrub

    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            message = scrub(message, argv[i + 1])
        elif arg.startswith("--storage="):
            message = scrub(message, arg.split("=", 1)[1])
    return message


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lepton-search`` console script."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="lepton-search", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except LeptonSearchError as e:
        from lepton_search.search import RunInterrupted

        if debug:
            raise
        click.echo(f"Error: {_scrubbed(str(e), argv if argv is not None else sys.argv[1:])}", err=True)
        return EXIT_INTERRUPTED if isinstance(e, RunInterrupted) else EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return EXIT_INTERRUPTED
    except OSError as e:
        # A file, folder or port the command needed (unwritable -o, full disk, port in use): one line.
        if debug:
            raise
        click.echo(f"Error: {_scrubbed(_os_error_message(e), argv if argv is not None else sys.argv[1:])}", err=True)
        return EXIT_ERROR
    except SystemExit as e:
        # click reports its own exits as return values (standalone_mode=False): this one came from
        # user code (a task, a plugin) and must not pass for success.
        if debug:
            raise
        click.echo(
            f"Error: code outside lepton-search called sys.exit({e.code!r}) during the command; "
            "rerun with --debug for the traceback.",
            err=True,
        )
        return EXIT_ERROR
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
