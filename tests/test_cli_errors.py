"""One CLI error style (a person's mistake is one line and exit code 2, whatever raised it) and
`--home` on every command that touches the home, with real bad inputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[1]
# The only commands that read or write nothing under the home.
HOMELESS = {"agents families"}


def leaf_commands(command, path=()) -> dict[str, object]:
    """'agents run' -> its click command, for every command of the app."""
    subcommands = getattr(command, "commands", None)
    if not subcommands:
        return {" ".join(path): command}
    out = {}
    for name, sub in subcommands.items():
        out |= leaf_commands(sub, (*path, name))
    return out


def test_every_command_that_touches_the_home_takes_home():
    commands = leaf_commands(typer.main.get_command(app))
    assert {"ingest", "sql", "export", "status", "collector", "agents run", "dataset build", "train",
            "evaluate", "plot", "sample", "run loop", "run collect", "serve", "experiment"} <= set(commands)
    missing = [name for name, cmd in commands.items()
               if name not in HOMELESS and not any("--home" in p.opts for p in cmd.params)]
    assert not missing, f"commands without --home: {missing}"


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    """A home with a store, and $GROKLOOP_HOME set to a decoy that must stay untouched."""
    root = tmp_path_factory.mktemp("homes")
    home, decoy = root / "home", root / "decoy"
    saved = os.environ.get("GROKLOOP_HOME")
    os.environ["GROKLOOP_HOME"] = str(decoy)
    try:
        result = CliRunner().invoke(app, ["agents", "run", "--family", "modular", "-p", "p=7", "--agents", "1",
                                          "--episodes", "12", "--no-ingest", "--no-progress", "--home", str(home)])
        assert result.exit_code == 0, result.output
        yield home, decoy
    finally:
        if saved is None:
            os.environ.pop("GROKLOOP_HOME")
        else:
            os.environ["GROKLOOP_HOME"] = saved


def test_home_is_the_home_the_commands_use(homes, tmp_path):
    home, decoy = homes
    runner = CliRunner()
    assert len(list((home / "spool").glob("*.arrow"))) >= 1 and not (home / "store.duckdb").exists()
    result = runner.invoke(app, ["ingest", "--home", str(home)])
    assert result.exit_code == 0 and "12 trajectories" in result.output, result.output
    result = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM trajectories", "-f", "csv", "--home", str(home)])
    assert result.exit_code == 0 and result.output.splitlines() == ['"n"', "12"], result.output
    result = runner.invoke(app, ["status", "--home", str(home)])
    assert result.exit_code == 0 and str(home / "store.duckdb") in result.output.replace("\n", "")
    out = tmp_path / "trajectories.jsonl"
    result = runner.invoke(app, ["export", "-f", "jsonl", "-o", str(out), "--home", str(home)])
    assert result.exit_code == 0 and out.read_text().count('"type":"trajectory"') == 12, result.output
    result = runner.invoke(app, ["dataset", "list", "--home", str(home)])
    assert result.exit_code == 0, result.output
    assert not decoy.exists()  # $GROKLOOP_HOME was never touched


def _one_line_exit_2(result, starts: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {starts}"), result.output
    assert result.output.count("\n") == 1, result.output


H = ("--home", "{home}")  # the fixture's home, with a store


@pytest.mark.parametrize(("args", "starts"), [
    (["sql", "SELECT 1", "--hme", "x"], "No such option: --hme"),          # a mistyped option
    (["evaluate", *H], "Missing argument 'run'"),                          # a missing argument
    (["sql", *H], "give a query or --file FILE.sql"),
    (["sql", "SELECT 1", "-f", "xml", *H], "Invalid value for '--format'"),  # a bad choice
    (["sql", "SELEC 1", *H], "query failed: Parser Error"),                # DuckDB's message has 3 lines
    (["sql", "SELECT 1", "-f", "parquet", *H], "--format parquet needs --output FILE"),
    (["sql", "DROP TABLE trajectories", *H], "refused: DROP statement"),
    (["export", "-f", "jsonl", "-o", "x.jsonl", "--where", "((", *H], "--where must be one SQL condition"),
    (["ingest", "/nonexistent/segments", *H], "no such file or directory: /nonexistent/segments"),
    (["dataset", "show", "no-such-snapshot", *H], "no dataset snapshot 'no-such-snapshot'"),
    (["evaluate", "no-such-run", *H], "'no-such-run' is neither a checkpoint directory"),
    (["sample", "no-such-run", *H], "'no-such-run' is neither a checkpoint directory"),
    (["plot", "no-such-run", *H], "no accuracy metrics in the store for run(s): no-such-run"),
    (["train", "family=nope", *H], "unknown task family 'nope'"),
    (["agents", "run", "--family", "nope", *H], "unknown task family 'nope'"),
    (["agents", "run", "--family", "strings", "-p", "n_letters=1", *H], "n_letters must be in [2, 26]"),
    (["agents", "families", "-p", "nope"], "'nope': expected family:key=value"),
    (["collector", "--token-file", "/nonexistent/token", *H], "no such file or directory: /nonexistent/token"),
    (["run", "loop", "episodes=-1", *H], "episodes must be >= 0"),
    (["experiment", "nope", *H], "unknown experiment 'nope'"),
    (["experiment", "grokfast", "--runner", "nowhere", *H], "unknown runner 'nowhere'"),
    (["experiment", "clusters", "--setups", "ema", *H], "--setups, --objectives and --init apply to the grokfast"),
    (["experiment", "clusters", "--variants", "held out,k=2", *H], "unknown variant 'k=2'; variants: balanced,"),
    (["experiment", "clusters", "--settings", "grad_clp=1", *H], "unknown training setting 'grad_clp'"),
    (["experiment", "clusters", "--settings", "seed=3", *H], "--settings seed: the grid sets it per run"),
    (["experiment", "grokfast", "--settings", "grad_clip=1", *H], "--settings applies to the clusters experiment"),
])
def test_a_mistake_is_one_line_and_exit_2(homes, tmp_path, monkeypatch, args, starts):
    home, decoy = homes
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, [a.format(home=home) for a in args])
    _one_line_exit_2(result, starts)
    assert not decoy.exists()


def test_run_takes_the_home_once(tmp_path):
    result = CliRunner().invoke(app, ["run", "collect", f"home={tmp_path / 'a'}", "--home", str(tmp_path / "b")])
    _one_line_exit_2(result, "the home is given twice (--home and home=)")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_installed_command_says_a_usage_error_in_one_line(tmp_path):
    """The real entry point (not CliRunner): click's usage errors used to be a framed box."""
    env = {**os.environ, "GROKLOOP_HOME": str(tmp_path), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "status", "--hme", str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("error: No such option: --hme") and out.stderr.count("\n") == 1, out.stderr
    assert "--help" in out.stderr  # the way out
