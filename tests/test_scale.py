"""A denoiser that is not a toy (`size=base`) and a snapshot streamed from disk (`stream=true`)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from datasets import Dataset, DatasetDict
from test_train import metric_rows

from agents.tasks import get_family
from diffusion.config import TrainConfig, train_overrides
from diffusion.data import EncodedSplit, StreamedSplit, load_splits
from diffusion.train import initial_model, train

P5 = {"p": 5, "train_fraction": 0.6, "seed": 0}


def test_size_base_is_twelve_layers_of_768():
    cfg = train_overrides(TrainConfig(), ["size=base"])
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads) == (768, 12, 12)
    tokenizer, _ = load_splits(TrainConfig(family_params=P5))
    model = initial_model(cfg, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    assert 80e6 < n_params < 90e6  # 12 x (4 + 8) x 768^2 ~ 85M, as BERT/GPT-2 base without the big vocab
    with torch.no_grad():
        assert model(torch.zeros(2, tokenizer.seq_len, dtype=torch.long)).shape == (2, tokenizer.seq_len,
                                                                                     tokenizer.vocab_size)
    assert train_overrides(TrainConfig(), []).hidden_size == 128  # the small default is unchanged
    assert train_overrides(cfg, ["num_layers=6"]).size is None  # a shape of its own is no longer "base"


@pytest.mark.parametrize("settings,message", [
    (["size=huge"], "size must be one of small, base, large, got 'huge'"),
    (["size=base", "num_layers=6"], "size=base sets hidden_size, num_layers, num_heads; drop num_layers"),
    (["hidden_size=100", "num_heads=3"], "hidden_size 100 is not a multiple of num_heads 3"),
    (["stream=true"], "stream=true reads a snapshot: set dataset"),
])
def test_bad_shapes_and_streams_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        train_overrides(TrainConfig(), settings)
    with pytest.raises(ValueError, match="size=base is hidden_size"):
        train_overrides(TrainConfig(size="base"), [])


def write_snapshot(directory):
    """A snapshot as `grokloop dataset build` writes one: meta.json, Parquet, and hf/ (save_to_disk)."""
    fam = get_family("modular", seed=0, p=5, train_fraction=0.6)
    directory.mkdir(parents=True)
    (directory / "meta.json").write_text(json.dumps({"dataset_id": "ds-stream", "family": "modular",
                                                     "family_params": P5}))
    parts = {}
    for split, rows in fam.splits().items():
        parts[split] = pa.table({
            "task_id": pa.array([t.task_id for t in rows], pa.string()),
            "family": pa.array(["modular"] * len(rows), pa.string()),
            "split": pa.array([split] * len(rows), pa.string()),
            "cluster": pa.array([f"x{int(t.prompt[0]) % 2}" for t in rows], pa.string()),
            "prompt": pa.array([list(t.prompt) for t in rows], pa.list_(pa.string())),
            "answer": pa.array([list(t.answer) for t in rows], pa.list_(pa.string())),
        })
        pq.write_table(parts[split], directory / f"{split}.parquet")
    DatasetDict({s: Dataset(t) for s, t in parts.items()}).save_to_disk(str(directory / "hf"),
                                                                        num_shards={s: 1 for s in parts})
    return directory


def test_a_streamed_snapshot_trains_exactly_as_one_in_memory(tmp_path):
    snap = write_snapshot(tmp_path / "snap")
    base = dict(dataset=str(snap), hidden_size=32, num_layers=1, num_heads=2, batch_size=8, max_steps=40,
                eval_every=10, sampler_steps=1, home=str(tmp_path), progress=False)
    _, streamed = load_splits(TrainConfig(**base, stream=True))
    assert all(isinstance(s, StreamedSplit) for s in streamed.values())
    assert streamed["train"].rows.cache_files  # backed by Arrow files on disk, memory-mapped, not loaded
    _, loaded = load_splits(TrainConfig(**base))
    assert isinstance(loaded["train"], EncodedSplit)
    idx = torch.tensor([3, 0, 7])
    assert all(torch.equal(a, b) for a, b in zip(streamed["train"].batch(idx), loaded["train"].batch(idx),
                                                  strict=True))

    train(TrainConfig(**base, run_name="memory"))
    result = train(TrainConfig(**base, run_name="stream", stream=True))
    assert result.final_step == 40
    assert metric_rows(tmp_path, "stream") == metric_rows(tmp_path, "memory")
    assert "train/cluster:x0/acc" in result.metrics  # evaluation rows carry their clusters and tasks


def test_streaming_a_snapshot_without_its_hf_export_says_so(tmp_path):
    snap = write_snapshot(tmp_path / "snap")
    (snap / "hf" / "dataset_dict.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no hf/ export to stream from"):
        train(TrainConfig(dataset=str(snap), stream=True, home=str(tmp_path), run_name="x", progress=False))
    assert not (tmp_path / "runs" / "x").exists()
