"""The Grokfast reference mode: its decoder, its data split, its loop, run by our trainer."""

from __future__ import annotations

import duckdb
import pytest
import torch

from agents.tasks import get_family
from diffusion.data import BatchSampler
from diffusion.grokfast_reference import RefDecoder, multiplication_data, reference_run
from diffusion.model import Block, Denoiser, GrokfastRefDecoder, RefBlock, load_pretrained
from diffusion.train import TrainConfig, load_config, load_model, train
from storage.home import store_path

# The reference decoder's parameters (ironjr/grokfast main.py: Decoder(dim=128, num_layers=2,
# num_heads=4, num_tokens=p + 2 = 99, seq_len=5)), written out from its module definitions.
REFERENCE_SHAPES = {
    "token_embeddings.weight": (99, 128),
    "position_embeddings.weight": (5, 128),
    **{f"layers.{i}.{name}": shape for i in range(2) for name, shape in {
        "ln_1.weight": (128,), "ln_1.bias": (128,), "ln_2.weight": (128,), "ln_2.bias": (128,),
        "attn.in_proj_weight": (384, 128), "attn.in_proj_bias": (384,),
        "attn.out_proj.weight": (128, 128), "attn.out_proj.bias": (128,),
        "mlp.0.weight": (512, 128), "mlp.0.bias": (512,), "mlp.2.weight": (128, 512), "mlp.2.bias": (128,),
    }.items()},
    "ln_f.weight": (128,), "ln_f.bias": (128,),
    "head.weight": (99, 128),
}


def test_reference_decoder_has_the_reference_parameters():
    model = GrokfastRefDecoder(vocab_size=99, max_seq_len=5)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == REFERENCE_SHAPES
    assert sum(p.numel() for p in model.parameters()) == 422_784  # what the reference prints
    # PyTorch's default init, as there: embeddings N(0, 1)
    assert 0.9 < model.token_embeddings.weight.std() < 1.1


def test_our_reference_decoder_is_the_re_created_reference_decoder():
    # Built from the same seed they draw the same weights (the same modules in the same order) and,
    # one sequence-first and one batch-first, compute the same logits: what the reference trains is
    # what arch=grokfast_ref trains.
    torch.manual_seed(3)
    reference = RefDecoder(num_tokens=99).eval()
    torch.manual_seed(3)
    ours = GrokfastRefDecoder(vocab_size=99, max_seq_len=5).eval()
    mine = ours.state_dict()
    assert mine.keys() == reference.state_dict().keys()
    assert all(torch.equal(w, mine[name]) for name, w in reference.state_dict().items())
    ids = multiplication_data(97)[:4, :64]  # (T, B): a, op, b, =
    with torch.no_grad():
        assert torch.allclose(reference(ids).transpose(0, 1), ours(ids.T, causal=True), atol=1e-5)


def test_the_re_created_reference_loop_is_seeded_and_counts_whole_epochs():
    run = reference_run(seed=1, weight_decay=0.005, grokfast="ema", budget=25, p=11, batch_size=16,
                        stop_at_95=False)
    again = reference_run(seed=1, weight_decay=0.005, grokfast="ema", budget=25, p=11, batch_size=16,
                          stop_at_95=False)
    assert run.curve == again.curve
    # 110 equations, 55 to train on in batches of 16: 4 steps an epoch (the last partial), 6 epochs
    assert [step for step, _, _ in run.curve] == [4, 8, 12, 16, 20, 24] and run.steps == 24
    assert all(0.0 <= a <= 1.0 for _, train_acc, val_acc in run.curve for a in (train_acc, val_acc))


def test_reference_block_replaces_the_stream_with_its_norm():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    ref, ours = RefBlock(16, 2, 4).eval(), Block(16, 2, 4, 0.0).eval()
    identity = torch.ones(5, 4, dtype=torch.complex64)  # no rotation
    with torch.no_grad():
        # x = ln_1(x) first: the block cannot see the stream's scale; a pre-LN block carries it on.
        assert torch.allclose(ref(10 * x, causal=False), ref(x, causal=False), atol=1e-4)
        assert not torch.allclose(ours(10 * x, identity, causal=False), ours(x, identity, causal=False), atol=1e-1)


def test_reference_decoder_reads_causally_or_both_ways():
    torch.manual_seed(0)
    model = GrokfastRefDecoder(vocab_size=13, max_seq_len=5, hidden_size=32, num_heads=2).eval()
    ids = torch.randint(3, 13, (3, 5))
    changed = ids.clone()
    changed[:, 3] = (changed[:, 3] - 3 + 1) % 10 + 3
    with torch.no_grad():
        assert torch.equal(model(ids, causal=True)[:, :3], model(changed, causal=True)[:, :3])
        assert not torch.allclose(model(ids, causal=True)[:, 3:], model(changed, causal=True)[:, 3:])
        assert not torch.allclose(model(ids)[:, :3], model(changed)[:, :3])
        # learned absolute positions: the same token at two positions reads differently
        same = torch.tensor([[5, 5, 5, 5, 5]])
        assert not torch.allclose(model(same)[0, 0], model(same)[0, 1])
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="heads"):
        GrokfastRefDecoder(vocab_size=13, max_seq_len=5, hidden_size=30, num_heads=4)


def test_save_and_load_round_trip_keeps_the_class(tmp_path):
    torch.manual_seed(0)
    ref = GrokfastRefDecoder(vocab_size=13, max_seq_len=5, hidden_size=32, num_heads=2).eval()
    ours = Denoiser(vocab_size=13, max_seq_len=5, hidden_size=32, num_heads=2).eval()
    ref.save_pretrained(tmp_path / "ref")
    ours.save_pretrained(tmp_path / "ours")
    ids = torch.randint(0, 13, (4, 5))
    loaded_ref, loaded_ours = load_pretrained(tmp_path / "ref").eval(), load_pretrained(tmp_path / "ours").eval()
    assert type(loaded_ref) is GrokfastRefDecoder and type(loaded_ours) is Denoiser
    assert loaded_ref.config.hidden_size == 32
    with torch.no_grad():
        assert torch.equal(loaded_ref(ids), ref(ids))
        assert torch.equal(loaded_ref(ids, causal=True), ref(ids, causal=True))
        assert torch.equal(loaded_ours(ids), ours(ids))
    config = tmp_path / "ref" / "config.json"
    config.write_text(config.read_text().replace("GrokfastRefDecoder", "UNet2DModel"))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_pretrained(tmp_path / "ref")


def test_the_reference_split_has_9312_equations_and_no_y_zero():
    fam = get_family("modular", seed=0, p=97, operations=("x*y",), train_fraction=0.5, nonzero_y=True)
    splits = fam.splits()
    tasks = splits["train"] + splits["test_id"]
    assert len(tasks) == 97 * 96 == 9312
    assert len(splits["train"]) == len(splits["test_id"]) == 4656
    assert all(t.spec["y"] != 0 for t in tasks)
    assert {(t.spec["x"], t.spec["y"]) for t in tasks} == {(x, y) for x in range(97) for y in range(1, 97)}
    # a different world, so a different id: the default split (with y = 0) is not confused with it
    default = get_family("modular", seed=0, p=97, operations=("x*y",), train_fraction=0.5).splits()
    assert len(default["train"] + default["test_id"]) == 97 * 97
    assert not {t.task_id for t in tasks} & {t.task_id for t in default["train"] + default["test_id"]}
    with pytest.raises(ValueError, match="nonzero_y"):
        get_family("modular", p=7, nonzero_y="yes")


def test_keep_last_steps_on_the_partial_batch_and_covers_every_row_each_epoch():
    keep, drop = BatchSampler(10, 4, seed=0, keep_last=True), BatchSampler(10, 4, seed=0)
    epoch = [keep.next() for _ in range(3)]
    assert [len(b) for b in epoch] == [4, 4, 2]
    assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert len(keep.next()) == 4  # a new epoch starts
    assert [len(drop.next()) for _ in range(3)] == [4, 4, 4]  # the default drops the 2 left over


P7 = {"p": 7, "operations": ["x*y"], "train_fraction": 0.5, "nonzero_y": True, "seed": 0}


def ref_cfg(home, run_name, **kw):
    base = dict(arch="grokfast_ref", reference_loop=True, family="modular", family_params=P7,
                hidden_size=32, num_layers=1, num_heads=2, optimizer="adam", lr=3e-3, weight_decay=0.0,
                batch_size=8, max_steps=150, eval_every=50, eval_max_rows=0, sampler_steps=1, grokfast="ema",
                home=str(home), run_name=run_name, progress=False)
    return TrainConfig(**{**base, **kw})


def metrics(home, run_id, name=None):
    con = duckdb.connect(str(store_path(home)), read_only=True)
    try:
        rows = con.execute("SELECT step, name, value FROM metrics WHERE run_id = ? AND name != 'step_time'"
                           " ORDER BY step, name", [run_id]).fetchall()
    finally:
        con.close()
    return [(s, v) for s, n, v in rows if n == name] if name else rows


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_a_reference_mode_run_trains_saves_and_reloads(tmp_path, objective):
    # PyTorch's init (embeddings N(0, 1)) memorises slowly: no filter, a wider model, 200 steps
    result = train(ref_cfg(tmp_path, f"ref-{objective}", objective=objective, mdm_estimator="count",
                           grokfast="none", hidden_size=64, num_heads=4, max_steps=200, eval_every=50))
    assert result.final_step == 200 and result.metrics["train/acc"] == 1.0  # 21 equations memorised
    model = load_model(result.checkpoint_dir)
    assert type(model) is GrokfastRefDecoder and model.config.num_layers == 1


def test_reference_warmup_starts_at_lr_zero(tmp_path):
    ref = train(ref_cfg(tmp_path, "warm-ref", lr=1e-3, max_steps=3, eval_every=1))
    ours = train(ref_cfg(tmp_path, "warm-ours", lr=1e-3, max_steps=3, eval_every=1, reference_loop=False))
    # "lr" at step s is the rate of the update that led to it
    assert [v for _, v in metrics(tmp_path, ref.run_id, "lr")] == pytest.approx([1e-3, 0.0, 1e-4, 2e-4])
    assert [v for _, v in metrics(tmp_path, ours.run_id, "lr")] == pytest.approx([1e-3, 1e-4, 2e-4, 3e-4])


def test_a_step_of_our_trainer_is_a_step_of_the_reference_loop(tmp_path):
    # train() in reference mode (with its evaluations in between) against the reference's own update
    # written out: same initial weights and rows, cross-entropy of the last input position, its EMA
    # filter, Adam with L2 and LambdaLR's warmup from lr 0. [MASK] is out of both supports (our tokenizer
    # has it; the reference's vocabulary does not).
    from diffusion.grokfast_reference import ref_gradfilter_ema
    from diffusion.train import initial_model, load_splits

    cfg = ref_cfg(tmp_path, "same-step", objective="ar", lr=1e-3, weight_decay=0.005, max_steps=24, eval_every=1)
    train(cfg)
    ours = [v for _, v in metrics(tmp_path, "same-step", "train/batch_loss")]

    tokenizer, splits = load_splits(cfg)
    rows = splits["train"]
    model = initial_model(cfg, tokenizer)
    sampler = BatchSampler(len(rows), cfg.batch_size, seed=cfg.seed, keep_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=0.005, betas=cfg.betas)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1 if update > 10 else update / 10)
    reference, grads = [], None
    for _ in range(cfg.max_steps):
        ids, _ = rows.batch(sampler.next())
        logits = model(ids[:, :-1], causal=True)[:, -1].clone()
        logits[:, tokenizer.mask_id] = float("-inf")
        loss = torch.nn.functional.cross_entropy(logits, ids[:, -1])
        model.zero_grad()
        loss.backward()
        grads = ref_gradfilter_ema(model, grads, cfg.grokfast_alpha, cfg.grokfast_lamb)
        optimizer.step()
        warmup.step()
        reference.append(loss.item())
    assert len(ours) == cfg.max_steps and ours == pytest.approx(reference, abs=1e-5)
    assert reference[-1] < reference[10]  # it learned: the comparison is not of two flat lines


def test_the_reference_loop_on_our_token_ids_sees_our_tokenizer_s_rows(tmp_path):
    from diffusion.train import load_splits

    tokenizer, splits = load_splits(ref_cfg(tmp_path, "layout"))
    ours = {tuple(row) for split in ("train", "test_id") for row in splits[split].ids.tolist()}
    assert ours == {tuple(col) for col in multiplication_data(7, "grokloop").T.tolist()}  # the same 42 rows
    assert tokenizer.mask_id == 1 and tokenizer.vocab_size == 7 + 5
    run = reference_run(seed=0, weight_decay=0.0, budget=12, p=7, batch_size=8, stop_at_95=False, layout="grokloop")
    assert run.steps == 12 and len(run.curve) == 4
    with pytest.raises(ValueError, match="unknown token layout 'ours'"):
        reference_run(seed=0, weight_decay=0.0, budget=3, p=7, layout="ours")


def test_a_stopped_reference_run_extends_to_the_uninterrupted_one(tmp_path):
    # 21 training rows in batches of 8: every third step is the partial batch; resume must know where.
    whole = train(ref_cfg(tmp_path, "whole", max_steps=40, eval_every=5, grokfast="ma", grokfast_window=4))
    train(ref_cfg(tmp_path, "part", max_steps=20, eval_every=5, grokfast="ma", grokfast_window=4))
    part = train(load_config("part", ["max_steps=40"], home=str(tmp_path)), resume=True)
    assert part.final_step == whole.final_step == 40
    assert metrics(tmp_path, "part") == metrics(tmp_path, "whole")


def test_commuted_pair_breakdown_partitions_the_test_split(tmp_path):
    from bench.grokking import COMMUTED_GROUPS, commuted_accuracy

    tokenizer = get_family("modular", **P7).tokenizer()
    GrokfastRefDecoder(vocab_size=tokenizer.vocab_size, max_seq_len=5, hidden_size=16, num_heads=2
                       ).save_pretrained(tmp_path)
    acc = commuted_accuracy(tmp_path, P7, "ar")
    splits = get_family("modular", **P7).splits()
    train = {(t.spec["x"], t.spec["y"]) for t in splits["train"]}
    test = [(t.spec["x"], t.spec["y"]) for t in splits["test_id"]]
    assert set(acc) == set(COMMUTED_GROUPS)
    assert sum(n for _, n in acc.values()) == len(test) == 21
    assert acc["x = y"][1] == sum(x == y for x, y in test)
    assert acc["(y,x) in train"][1] == sum(x != y and (y, x) in train for x, y in test)
    assert acc["(y,x) not in data"][1] == sum(x == 0 for x, _ in test)  # (y, 0) is left out
    assert all(0.0 <= a <= 1.0 for a, n in acc.values() if n)


def test_the_reference_grid_runs_and_reports_only_finished_runs(tmp_path):
    from flows.experiments.grokfast import GROKFAST_REF_SIZES, grokfast_runs

    size = GROKFAST_REF_SIZES["quick"]
    home = str(tmp_path / "home")
    assert grokfast_runs(size, home=home, objectives=["ar"], setups=["ema"], arch="grokfast_ref",
                         finished_only=True) == []
    [trained] = grokfast_runs(size, home=home, objectives=["ar"], setups=["ema"], arch="grokfast_ref")
    assert trained["arch"] == "grokfast_ref" and "grokfast_ref-ref" in trained["run_id"]
    assert type(load_model(trained["checkpoint_dir"])) is GrokfastRefDecoder
    reported = grokfast_runs(size, home=home, objectives=["ar"], setups=["ema", "ma"], arch="grokfast_ref",
                             finished_only=True)
    assert [r["run_id"] for r in reported] == [trained["run_id"]]  # the MA run was not trained
    assert not any("-ma-" in p.name for p in (tmp_path / "home" / "runs").iterdir())
