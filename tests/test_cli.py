"""The CLI as a new user meets it: settings checked before work, output whole when it is not a terminal."""

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from agents.progress import LogProgress
from flows.cli import app
from storage.store import open_store

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ['family_params={"p": 11, "operations": ["x+y"], "train_fraction": 0.5, "seed": 0}',
              "max_steps=3", "eval_every=1", "hidden_size=16", "num_layers=1", "num_heads=2", "batch_size=16"]


def grokloop(*args: str, home: Path) -> subprocess.CompletedProcess:
    """The installed command's code path (`python -m flows.cli`), output captured: not a terminal."""
    env = {**os.environ, "GROKLOOP_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)


def test_run_loop_refuses_a_bad_setting_in_one_line_before_any_agent_starts(tmp_path):
    home = tmp_path / "home"
    out = grokloop("run", "loop", "episodes=abc", home=home)
    assert out.returncode == 2
    assert (out.stdout + out.stderr).strip() == "error: episodes must be an integer, got 'abc'"
    assert not home.exists()  # no spool, no store: nothing started


@pytest.mark.parametrize(("setting", "message"), [
    ('families=["twohop"]', "error: families may only list modular, two_hop, programs, strings, got 'twohop'"),
    ("families=[modular]", "error: families must be a JSON list of text, got '[modular]'"),  # not markup
    ('train_overrides={"max_step": 5}', "error: train_overrides: unknown training setting 'max_step'"),
    ("runner=spark", "error: unknown runner 'spark'; known: local, dask, ray"),
    ("dask_address=tcp://10.0.0.5:8786", "error: dask_address is set but the runner is local; set runner=dask"),
    (["runner=dask", "dask_address=10.0.0.5"], "error: dask_address '10.0.0.5' is not a scheduler address; "
                                          "expected tcp://host:port"),
    (["runner=dask", "dask_workers=0"], "error: dask_workers must be >= 1, got 0"),
])
def test_loop_settings_errors_are_one_line_exit_2(tmp_path, monkeypatch, setting, message):
    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / "home"))
    for command in (["run", "loop"], ["run", "collect"], ["run", "curate"]):
        result = CliRunner().invoke(app, [*command, *([setting] if isinstance(setting, str) else setting)])
        assert result.exit_code == 2
        assert result.output.startswith(message) and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "home").exists()


def test_family_parameters_are_typed_by_the_family(tmp_path):
    result = CliRunner().invoke(app, ["agents", "run", "--family", "modular", "-p", "p=abc", "--home",
                                      str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and result.output == "error: p must be an integer, got 'abc'\n"
    result = CliRunner().invoke(app, ["dataset", "build", "--family", "two_hop", "-p", "phi=[1]",
                                      "--home", str(tmp_path)])
    assert result.exit_code == 2 and result.output == "error: phi must be a number, got '[1]'\n"


def test_agents_run_logs_trajectories_that_start_before_their_steps_and_end_after(tmp_path):
    result = CliRunner().invoke(app, ["agents", "run", "--family", "programs", "--agents", "2", "--episodes",
                                      "30", "--home", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "store.duckdb", read_only=True) as con:
        n_steps, early, late, trajectories = con.execute(
            "SELECT count(*), count(*) FILTER (s.start_time < t.start_time),"
            " count(*) FILTER (s.end_time > t.end_time), count(DISTINCT t.trajectory_id)"
            " FROM steps s JOIN trajectories t USING (trajectory_id)").fetchone()
    assert trajectories == 60 and n_steps > 60
    assert (early, late) == (0, 0)


def test_train_output_in_a_log_is_whole_lines(tmp_path):
    run_name = "a-run-name-long-enough-that-an-80-column-table-or-line-would-cut-or-wrap-it-" + "x" * 40
    out = grokloop("train", *TINY_TRAIN, f"run_name={run_name}", home=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    evals = [line for line in lines if line.startswith("step ")]
    assert len(evals) == 4 and all(line.rstrip().endswith("T_grok -") or "T_grok" in line for line in evals)
    assert all("train loss" in line and "|w|" in line for line in evals)  # one eval, one line
    checkpoint = tmp_path / "runs" / run_name / "checkpoints" / "step_3"
    assert f"checkpoint: {checkpoint}" in lines
    assert f"run {run_name}: finished at step 3; T_mem" in out.stdout
    assert any(line.startswith(f"{run_name}: 3/3 (100%)") for line in lines)  # progress as a line


def test_sql_in_a_log_cuts_no_header_and_in_a_narrow_terminal_falls_back_to_csv(home, monkeypatch):
    with open_store(home / "store.duckdb"):
        pass
    long_value = "v" * 150
    query = (f"SELECT 'trajectory-0123456789' AS trajectory_id_of_the_longest_running_agent, "
             f"'{long_value}' AS a_path_that_must_not_be_cut, 3 AS n")
    result = CliRunner().invoke(app, ["sql", query])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "trajectory_id_of" in line)
    assert "trajectory_id_of_the_longest_running_agent" in header and "a_path_that_must_not_be_cut" in header
    assert long_value in result.output and "…" not in result.output

    import flows.cli_store as cli_store

    terminal, errors = io.StringIO(), io.StringIO()
    monkeypatch.setattr(cli_store, "console", Console(file=terminal, force_terminal=True, width=60,
                                                     color_system=None))
    monkeypatch.setattr(cli_store, "err_console", Console(file=errors, width=60))
    result = CliRunner().invoke(app, ["sql", query])
    assert result.exit_code == 0
    assert "3 columns do not fit in 60 characters: CSV follows" in errors.getvalue()
    assert result.output.splitlines()[0] == \
        '"trajectory_id_of_the_longest_running_agent","a_path_that_must_not_be_cut","n"'
    assert f'"trajectory-0123456789","{long_value}",3' in result.output
    errors.truncate(0)
    small = CliRunner().invoke(app, ["sql", "SELECT 1 AS n"])  # one that fits stays a table
    assert small.exit_code == 0 and not errors.getvalue().strip("\0")
    assert "┃ n ┃" in terminal.getvalue() and "\n1 row(s)\n" in terminal.getvalue()


def test_sql_help_names_every_view_the_store_has(home):
    with open_store(home / "store.duckdb") as con:
        views = [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    assert len(views) >= 7
    help_text = " ".join(CliRunner().invoke(app, ["sql", "--help"]).output.split())
    missing = [v for v in views if v not in help_text.replace("│", " ")]
    assert not missing, help_text


def test_agents_families_shows_the_sizes_the_loop_uses():
    from agents.tasks import FAMILY_NAMES, get_family
    from flows.config import LoopConfig

    loop = CliRunner().invoke(app, ["agents", "families"])
    defaults = CliRunner().invoke(app, ["agents", "families", "--family-defaults"])
    assert loop.exit_code == defaults.exit_code == 0
    for name in FAMILY_NAMES:
        loop_family = get_family(name, **LoopConfig().family_params.get(name, {}))
        assert loop_family.config_tag in loop.output
        assert f" {len(loop_family.splits()['train'])} " in next(
            line for line in loop.output.splitlines() if f" {name} " in line)
    assert get_family("two_hop").config_tag in defaults.output
    assert get_family("two_hop").config_tag not in loop.output


def test_log_progress_prints_a_line_per_interval_and_the_last_one():
    out = io.StringIO()
    console = Console(file=out, width=40)
    with LogProgress(console, every=0.0) as bar:
        task = bar.add_task("train", total=10, info="")
        for _ in range(3):
            bar.advance(task)
        bar.update(task, completed=10, info="test 0.93")
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["train: 1/10 (10%)", "train: 2/10 (20%)", "train: 3/10 (30%)",
                                                      "train: 10/10 (100%)", "train: 10/10 (100%)"]
    assert lines[-1].endswith("test 0.93")  # longer than the console's 40 columns, still one line
    out.truncate(0)
    out.seek(0)
    with LogProgress(console, every=3600.0) as bar:
        task = bar.add_task("ingest", total=4)
        bar.advance(task, 4)
    assert out.getvalue().count("\n") == 1 and out.getvalue().startswith("ingest: 4/4 (100%)")


def test_evaluate_table_names_each_clusters_split():
    from flows.cli_train import _by_split

    assert _by_split({"test_id": 0.5, "test_id/exact": 0.4, "test_id/cluster:x/y": 0.25, "cluster:x*y": 1.0}) == [
        ("test_id", "all", "verified", 0.5), ("test_id", "all", "exact match", 0.4),
        ("test_id", "cluster x/y", "verified", 0.25), ("all evaluated", "cluster x*y", "verified", 1.0)]


def test_from_pretrained_is_quiet(tmp_path, capfd):
    from diffusion.model import Denoiser

    Denoiser(vocab_size=10, max_seq_len=4, hidden_size=16, num_layers=1, num_heads=2).save_pretrained(tmp_path)
    capfd.readouterr()
    Denoiser.from_pretrained(tmp_path)
    captured = capfd.readouterr()
    assert "accelerate" not in captured.out + captured.err


def test_a_table_too_wide_for_the_terminal_is_printed_whole_as_csv(monkeypatch):
    import flows.cli_agents as cli_agents
    from agents.tasks import get_family
    from flows.config import LoopConfig

    terminal, errors = io.StringIO(), io.StringIO()
    monkeypatch.setattr(cli_agents, "console", Console(file=terminal, force_terminal=True, width=50,
                                                       color_system=None))
    monkeypatch.setattr(cli_agents, "err_console", Console(file=errors, width=50))
    assert CliRunner().invoke(app, ["agents", "families"]).exit_code == 0
    assert "7 columns do not fit in 50 characters: CSV follows" in errors.getvalue()
    lines = terminal.getvalue().splitlines()
    assert lines[1] == "family,train,test_id,test_ood,vocab,prompt+answer,parameters"
    tag = get_family("two_hop", **LoopConfig().family_params["two_hop"]).config_tag
    assert any(line.startswith("two_hop,") and line.endswith("," + tag) for line in lines)
    assert "…" not in terminal.getvalue()


def test_the_cli_starts_without_torch_prefect_or_pandas():
    """`grokloop --help` and the store's commands import none of the heavy libraries (seconds
    together): each command imports what it needs when it runs."""
    code = "import sys, flows.cli; print(sorted({'torch', 'prefect', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.stdout.strip() == "[]", out.stdout
