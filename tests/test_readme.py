"""Every README code block that can run on CI runs, as written, with small settings appended.

Commands run in the order the README gives them, in one fresh home (`./.grokloop` of a temp
directory, as a new user's would be). A line the README marks "not run in CI" is skipped for the
reason it gives there; any other command this test does not know how to run fails it, so a new
README example cannot go untested.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import duckdb
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_store import view_names
from storage.store import open_store

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
NOT_IN_CI = "not run in CI"

TINY_MODEL = ["hidden_size=16", "num_layers=1", "num_heads=2", "batch_size=64", "eval_max_rows=128"]
# Appended to a command (later settings win), so the README's sizes run in seconds.
SMALL_SETTINGS = {
    "train": ["max_steps=10", "eval_every=5", *TINY_MODEL,
              'family_params={"p": 11, "operations": ["x+y"], "train_fraction": 0.5, "seed": 0}'],
    "run": ['families=["modular"]', "episodes=10", "n_agents=1",
            'family_params={"modular": {"p": 11, "operations": ["x+y"], "train_fraction": 0.6}}',
            'train_overrides={"max_steps": 10, "eval_every": 5, "hidden_size": 16, "num_layers": 1,'
            ' "num_heads": 2, "batch_size": 64, "eval_max_rows": 128}'],
}
SMALL_OPTIONS = {"--agents": "2", "--episodes": "25"}


def code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def small(args: list[str]) -> list[str]:
    args = [SMALL_OPTIONS.get(prev, a) if prev in SMALL_OPTIONS else a for prev, a in zip(["", *args[:-1]], args, strict=True)]
    if args[0] == "train" and "--resume" not in args or args[0] == "run":
        args += SMALL_SETTINGS[args[0]]
    return args


def run_command(line: str, ran: list[str]) -> None:
    if "$DATASET_ID" in line:
        with open_store(Path(".grokloop/store.duckdb"), read_only=True) as con:
            os.environ["DATASET_ID"] = con.execute(
                "SELECT dataset_id FROM datasets ORDER BY created_at DESC LIMIT 1").fetchone()[0]
    words = shlex.split(os.path.expandvars(line), comments=True)
    if not words:
        return
    if words[:1] == ["source"] and words[1] == ".venv/bin/activate":
        return  # test_activate_puts_grokloop_on_path
    assert words[0] in ("grokloop", ".venv/bin/grokloop"), f"the README test cannot run {line!r}"
    result = CliRunner().invoke(app, small(words[1:]))
    assert result.exit_code == 0, f"{line}\n{result.output}"
    ran.append(line)


def test_every_readme_block_runs(tmp_path, monkeypatch, prefect_server):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").symlink_to(REPO / "docs")  # a reader runs these in the checkout: its results pages are there
    monkeypatch.setenv("GROKLOOP_HOME", str(tmp_path / ".grokloop"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ran, skipped, snippets = [], [], 0
    for lang, body in code_blocks(README):
        if lang == "bash":
            for line in body.splitlines():
                if NOT_IN_CI in line:
                    skipped.append(line)
                else:
                    run_command(line, ran)
        elif lang == "python":
            out = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
            assert out.returncode == 0, f"{body}\n{out.stderr}"
            assert "accelerate" not in out.stderr
            snippets += 1
    assert snippets == 3 and len(ran) >= 17
    # Skipped: only set-up, CI itself, servers (Prefect's, a Dask cluster's, PostgreSQL's for the
    # shared store, which tests/test_lake.py starts), the experiments tests/test_experiments.py runs,
    # and multi-GPU launches (tests/test_distributed.py runs torchrun on CPU).
    assert {shlex.split(s, comments=True)[0] for s in skipped} <= {"make", "prefect", "grokloop", "dask", "torchrun",
                                                                    "createdb",
                                                                    "PREFECT_API_URL=http://127.0.0.1:4200/api"}
    assert all(f"{NOT_IN_CI}:" in s for s in skipped)
    assert (tmp_path / "curves.png").stat().st_size > 0 and (tmp_path / "out_dir").is_dir()
    with open_store(tmp_path / ".grokloop" / "store.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE run_id = 'first'").fetchone()[0] == 1
        # the README's views table names the views views.sql creates, and each one runs
        views_table = README[README.index("Views for the common questions"):README.index("Bad records")]
        listed = re.findall(r"^\| `(\w+)` \|", views_table, re.M)
        assert sorted(listed) == sorted(view_names())
        for view in listed:
            con.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()


def test_the_duckdb_cli_named_is_the_version_of_the_pinned_package():
    named = re.search(r"`duckdb` command-line tool\s+of the same version as the Python package pinned here, "
                      r"(\d+\.\d+)", README)
    assert named, "the README names the duckdb CLI without its version"
    assert duckdb.__version__.startswith(named.group(1) + ".")


def test_activate_puts_grokloop_on_path(tmp_path):
    # `source .venv/bin/activate`, as the README says right after `make setup`: this venv's activate.
    out = subprocess.run(["bash", "-c", f'source "{sys.prefix}/bin/activate" && command -v grokloop && '
                                        "grokloop agents families"],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == f"{sys.prefix}/bin/grokloop"
    assert "two_hop" in out.stdout
