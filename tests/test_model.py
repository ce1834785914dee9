import pytest
import torch

from diffusion.model import Denoiser


def tiny(**kw):
    torch.manual_seed(0)
    return Denoiser(**{"vocab_size": 13, "max_seq_len": 6, "hidden_size": 32, "num_layers": 2,
                       "num_heads": 2, **kw})


def test_save_pretrained_round_trip(tmp_path):
    model = tiny(mlp_ratio=2).eval()
    ids = torch.randint(0, 13, (4, 6))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = Denoiser.from_pretrained(tmp_path, low_cpu_mem_usage=False).eval()
    assert loaded.config.mlp_ratio == 2 and loaded.config.vocab_size == 13
    assert torch.equal(loaded(ids), model(ids))
    assert torch.equal(loaded(ids, causal=True), model(ids, causal=True))


def test_causal_reading_ignores_the_future_bidirectional_does_not():
    model = tiny().eval()
    ids = torch.randint(3, 13, (2, 6))
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1 - 3) % 10 + 3  # change one later token
    with torch.no_grad():
        causal_a, causal_b = model(ids, causal=True), model(changed, causal=True)
        bi_a, bi_b = model(ids), model(changed)
    assert torch.equal(causal_a[:, :4], causal_b[:, :4])
    assert not torch.allclose(causal_a[:, 4:], causal_b[:, 4:])
    assert not torch.allclose(bi_a[:, :4], bi_b[:, :4])  # bidirectional: earlier positions see it


def test_rope_makes_position_matter():
    model = tiny().eval()
    ids = torch.tensor([[5, 6, 5, 6, 5, 6]])
    with torch.no_grad():
        logits = model(ids)
    # Same token, same neighbours' multiset, different positions -> different outputs.
    assert not torch.allclose(logits[0, 0], logits[0, 2])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="heads"):
        tiny(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny()(torch.zeros(1, 7, dtype=torch.long))


def test_init_scale_is_a_config_choice_that_round_trips(tmp_path):
    small, torch_default = tiny(), tiny(init="torch")
    assert small.embed.weight.std() < 0.03           # GPT-2's N(0, 0.02)
    assert 0.8 < torch_default.embed.weight.std() < 1.2  # nn.Embedding's N(0, 1): the slow-grokking init
    torch_default.save_pretrained(tmp_path)
    assert Denoiser.from_pretrained(tmp_path, low_cpu_mem_usage=False).config.init == "torch"
    with pytest.raises(ValueError, match="init must be"):
        tiny(init="xavier")
