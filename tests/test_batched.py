import dataclasses
import os
import signal

import pytest
import torch
from test_train import P5, metric_rows, run_row, tiny

from diffusion.batched import batchable, train_batched
from diffusion.grouped import grouped_forward, stack_params
from diffusion.model import Denoiser
from diffusion.objective import ar_loss, mdm_loss_given, mdm_noise
from diffusion.records import eval_line
from diffusion.train import load_config, train


def close_rows(a, b):
    assert [(s, n) for s, n, _ in a] == [(s, n) for s, n, _ in b]
    for (s, n, x), (_, _, y) in zip(a, b, strict=True):
        assert x == pytest.approx(y, rel=1e-3, abs=1e-4), (s, n)


@pytest.mark.parametrize("causal", [False, True])
def test_grouped_weights_compute_each_runs_own_logits_losses_and_gradients(causal):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(Denoiser(vocab_size=11, max_seq_len=6, hidden_size=16, num_layers=2, num_heads=2,
                               init="torch"))  # N(0, 1) embeddings: runs far apart
    params = stack_params(models)
    ids = torch.randint(2, 11, (3, 4, 6))  # each run its own batch, no [MASK] (id 1) in it
    answer_mask = torch.zeros(3, 4, 6, dtype=torch.bool)
    answer_mask[..., 3:] = True
    answer_mask[0, 1, 4:] = False  # rows with different answer lengths: per-run normalisation counts
    grouped = grouped_forward(params, models[0].config, ids, causal=causal)
    alone = torch.stack([m(ids[i], causal=causal) for i, m in enumerate(models)])
    torch.testing.assert_close(grouped, alone, rtol=1e-5, atol=1e-5)

    def grouped_model(x, causal=False):
        return grouped_forward(params, models[0].config, x, causal)
    if causal:
        losses = ar_loss(grouped_model, ids, answer_mask, mask_id=1)
        singles = [ar_loss(m, ids[i], answer_mask[i], mask_id=1) for i, m in enumerate(models)]
    else:
        noise = [mdm_noise(ids[i], answer_mask[i], 1, generator=torch.Generator().manual_seed(i)) for i in range(3)]
        losses = mdm_loss_given(grouped_model, ids, *(torch.stack(x) for x in zip(*noise, strict=True)), mask_id=1)
        singles = [mdm_loss_given(m, ids[i], *noise[i], mask_id=1) for i, m in enumerate(models)]
    assert losses.shape == (3,)
    torch.testing.assert_close(losses, torch.stack(singles).detach(), rtol=1e-5, atol=1e-6)
    losses.sum().backward()
    torch.stack(singles).sum().backward()
    for name, p in models[1].named_parameters():  # run 1's slice of the gradient is run 1's own gradient
        torch.testing.assert_close(params[name].grad[1], p.grad, rtol=1e-4, atol=1e-6)


def test_grouped_weights_refuse_a_model_they_do_not_know():
    class Wider(Denoiser):
        def __init__(self):
            super().__init__(vocab_size=11, max_seq_len=6, hidden_size=16, num_layers=1, num_heads=2)
            self.extra = torch.nn.Linear(16, 16)
    with pytest.raises(ValueError, match="extra.weight"):
        stack_params([Wider(), Wider()])


@pytest.mark.parametrize(("grokfast", "objective", "full_sequence"), [("ema", "mdm", False), ("ma", "ar", True)])
def test_batched_seeds_match_the_same_seeds_trained_one_by_one(tmp_path, grokfast, objective, full_sequence):
    # Two seeds, each its own family split too: own data, order, noise, filter state, metrics; one lr schedule.
    # (AR with its loss on every token, composition's ar-full, the second time.)
    cfgs = [tiny(tmp_path, f"b{s}", seed=s, family_params={**P5, "seed": s}, max_steps=60, grokfast=grokfast,
                 objective=objective, full_sequence=full_sequence,
                 grokfast_window=5, eval_every=20, checkpoint_every=30, lr_decay="cosine", min_lr=1e-4)
            for s in (0, 1)]
    batched = train_batched(cfgs)
    alone = [train(dataclasses.replace(c, run_name=f"one{c.seed}")) for c in cfgs]
    for b, a in zip(batched, alone, strict=True):
        close_rows(metric_rows(tmp_path, b.run_id), metric_rows(tmp_path, a.run_id))
        assert (b.t_mem, b.t_grok, b.final_step) == (a.t_mem, a.t_grok, a.final_step)
        assert run_row(tmp_path, b.run_id)["status"] == "finished"
        assert list((b.run_dir / "tensorboard").iterdir())  # mirrored to TensorBoard like any run
        assert sorted(p.name for p in (b.run_dir / "checkpoints").iterdir()) == \
            sorted(p.name for p in (a.run_dir / "checkpoints").iterdir())
    # each batched run resumes on its own, with `train`, as if it had been trained alone
    more = [train(load_config(r.run_id, ["max_steps=80"], home=str(tmp_path)), resume=True) for r in batched]
    again = [train(load_config(r.run_id, ["max_steps=80"], home=str(tmp_path)), resume=True) for r in alone]
    for b, a in zip(more, again, strict=True):
        assert b.final_step == a.final_step == 80
        close_rows(metric_rows(tmp_path, b.run_id), metric_rows(tmp_path, a.run_id))


def test_batched_runs_stop_by_the_rule_where_train_stops_them(tmp_path):
    """patience from a threshold held, once past mem_multiple x T_mem: held from step 0 here (a threshold of 0.2),
    T_mem 140, so the rule ends the run at 280, before the cap, batched or not."""
    cfg = tiny(tmp_path, "rule", max_steps=300, patience=20, mem_multiple=2.0, grok_threshold=0.2)
    alone = train(dataclasses.replace(cfg, run_name="rule-alone"))
    (batched,) = train_batched([cfg])
    assert (alone.t_grok, alone.t_mem, alone.final_step) == (0, 140, 280)
    assert (batched.t_grok, batched.t_mem, batched.final_step) == (0, 140, 280)
    assert run_row(tmp_path, "rule")["status"] == "finished"


def test_patience_counts_from_a_threshold_held_not_from_a_first_crossing(tmp_path):
    """This run's test ID reads 0.6 at step 100, 0.7 at 120, then 0.5 from 140 to the end. At a
    threshold of 0.6, T_grok is 100 and the curve falls back at 140, the step patience 40 after T_grok
    would stop it: the run goes on to the cap, batched or not. At 0.5 it holds from 100: stopped at 140."""
    curve = tiny(tmp_path, "curve", max_steps=300)
    train(curve)
    assert [(s, round(v, 3)) for s, n, v in metric_rows(tmp_path, "curve") if n == "test_id/acc" and 80 <= s <= 160] == \
        [(80, 0.4), (100, 0.6), (120, 0.7), (140, 0.5), (160, 0.5)]
    fell_back = dataclasses.replace(curve, run_name="fell-back", patience=40, grok_threshold=0.6)
    held = dataclasses.replace(curve, run_name="held", patience=40, grok_threshold=0.5)
    for cfg in (fell_back, held):
        alone = train(dataclasses.replace(cfg, run_name=f"{cfg.run_name}-alone"))
        (batched,) = train_batched([cfg])
        expected = (100, 300) if cfg is fell_back else (100, 140)
        assert (alone.t_grok, alone.final_step) == (batched.t_grok, batched.final_step) == expected


def test_the_eval_line_says_whether_t_grok_is_held_now():
    m = {"train/acc": 1.0, "train/loss": 0.01, "test_id/acc": 0.5, "test_id/loss": 2.0, "weight_norm": 20.0}
    assert eval_line(140, m, 140, None, None).endswith("T_mem 140 T_grok -")
    assert eval_line(140, m, 140, 100, None, "run").endswith("T_mem 140 T_grok 100 (not held)")
    assert eval_line(300, m, 140, 100, 100).endswith("T_grok 100")
    assert eval_line(300, m, 140, 100, 240).endswith("T_grok 100 (held from 240)")


def test_a_run_stopped_by_the_earlier_rule_stays_stopped_when_resumed(tmp_path):
    """A checkpoint written before patience counted from a threshold held has no `t_held`: it resumes
    with T_grok in its place, the rule it ran under, so a finished run asked to continue stays finished
    (here T_grok 100, test ID 0.5 at 140, where the new rule would start over and train to 300)."""
    cfg = tiny(tmp_path, "old", max_steps=140, grok_threshold=0.6)
    first = train(cfg)
    state_file = first.checkpoint_dir / "state.pt"
    blob = torch.load(state_file, weights_only=False)
    assert (blob["t_grok"], blob["t_held"]) == (100, None)
    del blob["t_held"]
    torch.save(blob, state_file)
    again = train(load_config("old", ["max_steps=300", "patience=20"], home=str(tmp_path)), resume=True)
    assert (again.t_grok, again.final_step) == (100, 140)


def test_a_run_that_memorises_late_goes_on_to_mem_multiple_x_t_mem(tmp_path):
    """T_mem 140 of a 200-step cap, mem_multiple 2: the run goes on past the cap to 280 (no stopping
    rule), batched or not, and the composition page's `until` says where its cap moved; without
    mem_multiple the cap is the end."""
    from flows.experiments.composition import _until

    cfg = tiny(tmp_path, "late", max_steps=200, mem_multiple=2.0)
    alone = train(dataclasses.replace(cfg, run_name="late-alone"))
    (batched,) = train_batched([cfg])
    assert (alone.t_mem, alone.final_step) == (batched.t_mem, batched.final_step) == (140, 280)
    assert run_row(tmp_path, "late")["status"] == "finished"
    assert _until(cfg, 140) == "cap 280 (2 x T_mem)" and _until(cfg, 60) == "cap 200"
    plain = train(dataclasses.replace(cfg, run_name="late-plain", mem_multiple=0.0))
    assert (plain.t_mem, plain.final_step) == (140, 200)


def _interrupt(step):
    raise KeyboardInterrupt  # Ctrl-C (or the CLI's SIGTERM, a SystemExit) landing mid-step


def _terminate(step):
    os.kill(os.getpid(), signal.SIGTERM)  # a deadline, `kill`: the handler lets the step finish


@pytest.mark.parametrize("stop, ends_with, saved", [(_interrupt, KeyboardInterrupt, "step_40"),
                                                    (_terminate, SystemExit, "step_46")])
def test_stopped_batched_seeds_are_recorded_stopped_and_each_resumes_to_the_same_numbers(
        tmp_path, monkeypatch, stop, ends_with, saved):
    """Stopped during step 45: every unfinished run is `stopped`, not failed, and continues alone from
    its checkpoint to the numbers of the uninterrupted run. An exception mid-step leaves the last
    scheduled checkpoint (40); SIGTERM, as for `train`, finishes the step and checkpoints every run at
    46, then exits 143, and the signal's handler is gone again."""
    import diffusion.batched as batched_module

    cfgs = [tiny(tmp_path, f"b{s}", seed=s, family_params={**P5, "seed": s}, max_steps=60, eval_every=20,
                 checkpoint_every=20) for s in (0, 1)]
    real = batched_module.learning_rate

    def stopped_at_45(cfg, step):
        if step == 45:
            stop(step)
        return real(cfg, step)

    monkeypatch.setattr(batched_module, "learning_rate", stopped_at_45)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ends_with) as ended:
        train_batched(cfgs)
    if ends_with is SystemExit:
        assert ended.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler
    monkeypatch.setattr(batched_module, "learning_rate", real)
    for cfg in cfgs:
        assert run_row(tmp_path, cfg.run_name)["status"] == "stopped"
        assert (tmp_path / "runs" / cfg.run_name / "latest").read_text() == saved
        resumed = train(load_config(cfg.run_name, home=str(tmp_path)), resume=True)
        alone = train(dataclasses.replace(cfg, run_name=f"one{cfg.seed}"))
        assert resumed.final_step == 60 and run_row(tmp_path, cfg.run_name)["status"] == "finished"
        close_rows(metric_rows(tmp_path, cfg.run_name), metric_rows(tmp_path, alone.run_id))


def test_runs_that_differ_in_architecture_or_need_per_run_clipping_are_refused(tmp_path):
    a, b = tiny(tmp_path, "a"), tiny(tmp_path, "b", hidden_size=64)
    assert "hidden_size" in batchable([a, b])
    assert "grad_clip" in batchable([a, dataclasses.replace(a, run_name="c", grad_clip=1.0)])
    with pytest.raises(ValueError, match="hidden_size"):
        train_batched([a, b])
    assert not (tmp_path / "runs" / "a").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="distinct run names"):
        train_batched([a, dataclasses.replace(a, seed=1)])


def test_an_experiments_seeds_train_as_one_batch_when_they_can(tmp_path):
    from flows.steps import train_seeds

    cfgs = [tiny(tmp_path, f"e{s}", seed=s, max_steps=20) for s in (0, 1, 2)]
    results = train_seeds(cfgs, batch=True)
    assert [r.final_step for r in results] == [20, 20, 20]
    # one batched step advances every run: the three share one step time (one by one they would not)
    assert len({r.metrics["step_time"] for r in results}) == 1
    # started runs are not batched again: each resumes on its own
    more = train_seeds([dataclasses.replace(c, max_steps=40) for c in cfgs], batch=True)
    assert [r.final_step for r in more] == [40, 40, 40]
    assert len({r.metrics["step_time"] for r in more}) == 3


def test_on_a_cpu_an_experiments_seeds_train_one_by_one_by_default(tmp_path, monkeypatch):
    from flows.steps import train_seeds

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    results = train_seeds([tiny(tmp_path, f"c{s}", seed=s, max_steps=10, device="auto") for s in (0, 1)])
    assert [r.final_step for r in results] == [10, 10]
    assert len({r.metrics["step_time"] for r in results}) == 2  # each its own steps
