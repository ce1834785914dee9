"""The grokking figure: panels, T_mem / T_grok marks (and whether T_grok held), a continued run's
offset, the accuracy axis; built by hand and from the store."""

from diffusion.plot import RunCurves, _steps_before, grokking_figure, load_curves
from storage.runs import record_run
from storage.store import connect


def test_a_continued_run_is_drawn_from_where_its_parent_stopped():
    lineage = {"r0": (None, 300, None), "r1": ("r0", 300, 150), "r2": ("r1", 200, None),
               "loop": ("loop", 10, None)}  # a self-referencing row must not hang the plot
    assert [_steps_before(r, lineage) for r in ("r0", "r1", "r2", "loop", "unknown")] == [0, 300, 600, 0, 0]


def test_grokking_figure_has_a_panel_per_family_with_t_mem_and_t_grok_marked():
    series = {"train/acc": ([0, 1, 10, 100, 1000], [0.0, 0.1, 1.0, 1.0, 1.0]),
              "test_id/acc": ([0, 1, 10, 100, 1000], [0.0, 0.0, 0.1, 0.5, 0.97])}
    runs = [RunCurves("a", "modular", True, 0, 10, 1000, series),
            RunCurves("b", "two_hop", False, 0, 100, None, series)]
    fig = grokking_figure(runs)
    modular, two_hop = fig.axes
    assert (modular.get_title(), two_hop.get_title()) == ("modular", "two_hop")
    assert (modular.get_xscale(), two_hop.get_xscale()) == ("log", "linear")
    assert min(modular.lines[0].get_xdata()) == 1  # step 0 dropped on the log axis, kept on the linear one
    assert min(two_hop.lines[0].get_xdata()) == 0
    assert [t.get_text() for t in modular.texts] == ["T_mem 10 · T_grok 1,000"]
    assert [t.get_text() for t in two_hop.texts] == ["T_mem 100 · T_grok —"]
    styles = {line.get_label().split()[0]: line.get_linestyle() for line in modular.lines if line.get_label()[0] != "_"}
    assert styles == {"train": "-", "test_id": "--"}
    linear = grokking_figure(runs, log_steps=False).axes[0]  # `plot --linear`: what happens late, spread out
    assert linear.get_xscale() == "linear" and min(linear.lines[0].get_xdata()) == 0
    # T_grok is a first crossing: the mark says when the store has it falling back, or holding only later
    runs = [RunCurves("c", "modular", True, 0, 10, 1000, series, fell_back=True),
            RunCurves("d", "two_hop", True, 0, 10, 100, series, t_grok_held=1000)]
    assert [t.get_text() for ax in grokking_figure(runs).axes for t in ax.texts] == \
        ["T_mem 10 · T_grok 1,000 (not held)", "T_mem 10 · T_grok 100 (held from 1,000)"]


def test_load_curves_reads_from_the_store_whether_a_runs_t_grok_held(home):
    connect().close()
    for run_id, ids in (("fell", [0.5, 0.96, 0.9]), ("held", [0.5, 0.96, 0.97]), ("late", [0.96, 0.9, 0.97])):
        row = {"run_id": run_id, "name": None, "objective": "ar", "dataset_id": None, "config": '{"family": "modular"}',
               "status": "finished", "parent_run_id": None, "t_mem": 100, "t_grok": 200 if ids[0] < 0.95 else 100,
               "grok_ratio": None, "grok_delay": None, "final_step": 300}
        assert record_run(home, row, [(100 * (i + 1), "test_id/acc", v) for i, v in enumerate(ids)], final=True)
    got = {c.run_id: (c.t_grok, c.t_grok_held, c.fell_back) for c in load_curves(["fell", "held", "late"], home)}
    assert got == {"fell": (200, None, True), "held": (200, 200, False), "late": (100, 300, False)}


def test_named_panels_hold_every_seed_of_a_group_each_seed_one_colour():
    series = {"train/acc": ([1, 10, 100], [0.1, 1.0, 1.0]), "test_id/acc": ([1, 10, 100], [0.0, 0.1, 0.97])}
    runs = [RunCurves(f"{arm}-s{seed}", "two_hop", True, 0, 10, 100, series, seed=seed)
            for arm in ("ar", "mdm") for seed in (0, 1)] + [RunCurves("mdm-s1-again", "two_hop", True, 0, 10, None,
                                                                      series, seed=1)]
    panels = {"ar-s0": "ar", "ar-s1": "ar", "mdm-s0": "mdm", "mdm-s1": "mdm", "mdm-s1-again": "mdm (twice)"}
    fig = grokking_figure(runs, panels=panels)
    ar, mdm, twice = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["ar", "mdm", "mdm (twice)"]
    curves = [line for ax in (ar, mdm) for line in ax.lines if not line.get_label().startswith("_")]  # not T_mem
    assert {line.get_label() for line in curves} == {"seed 0", "seed 1"}  # runs named by seed, not run id
    assert len({(line.get_label(), line.get_color()) for line in curves}) == 2  # a seed, one colour in both panels
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["seed 0", "seed 1"]
    assert twice.get_legend() is None and twice.lines[0].get_label() == "seed 1"
    # seeds that reach T_mem and T_grok at the same steps: a row each above the panel, not one on another
    assert [t.get_text() for t in ar.texts] == ["T_mem 10 · T_grok 100"] * 2
    assert len({t.xyann for t in ar.texts}) == 2 and [t.get_color() for t in ar.texts] == \
        [line.get_color() for line in ar.lines if line.get_label() in ("seed 0", "seed 1")][::2]


def test_a_fitted_accuracy_axis_shows_a_curve_near_chance():
    ood = {"test_ood/acc": ([1, 10, 100, 1000], [0.02, 0.03, 0.08, 0.21])}
    runs = [RunCurves("ar-shared-s2", "two_hop", True, 0, 10, 12, ood, seed=2)]
    fixed, fitted = (grokking_figure(runs, {"test_ood/acc": ":"}, ylim=ylim).axes[0] for ylim in ((-0.02, 1.02), None))
    assert fixed.get_ylim() == (-0.02, 1.02)
    low, high = fitted.get_ylim()
    assert 0.0 < low < 0.02 and 0.21 < high < 0.3  # the rise fills the panel
