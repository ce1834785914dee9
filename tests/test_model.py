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


def test_rope_rotates_interleaved_channel_pairs_by_position():
    # The convention every saved checkpoint was trained with: channels (2j, 2j+1) rotated by angle
    # t * base^(-2j/D) at position t. A change of pairing would silently change what a loaded model computes.
    from diffusion.model import apply_rope, rope_rotation

    T, D, base = 5, 8, 10000.0
    x = torch.randn(3, 2, T, D)
    angle = torch.arange(T).float()[:, None] * base ** (-torch.arange(0, D, 2).float() / D)  # (T, D/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    expected = torch.stack((x1 * angle.cos() - x2 * angle.sin(), x1 * angle.sin() + x2 * angle.cos()), -1)
    assert torch.allclose(apply_rope(x, rope_rotation(T, D, base, x.device)), expected.flatten(-2), atol=1e-6)


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


def test_shared_layers_apply_one_block_num_layers_times_and_round_trip(tmp_path):
    from diffusion.model import load_pretrained

    shared = tiny(num_layers=3, share_layers=True).eval()
    assert len(shared.blocks) == 1
    ids = torch.randint(0, 13, (4, 6))
    with torch.no_grad():  # the same block three times over, by hand
        from diffusion.model import rope_rotation

        rotation = rope_rotation(6, 16, 10000.0, ids.device)
        x = shared.embed(ids)
        for _ in range(3):
            x = shared.blocks[0](x, rotation, False)
        assert torch.allclose(shared(ids), shared.head(shared.norm(x)))
    one_layer = tiny(num_layers=1)
    one_layer.load_state_dict(shared.state_dict())
    assert not torch.allclose(one_layer.eval()(ids), shared(ids))  # depth 3 is not depth 1
    shared.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path).eval()
    assert loaded.config.share_layers and len(loaded.blocks) == 1
    assert torch.equal(loaded(ids, causal=True), shared(ids, causal=True))


def test_shared_width_matches_the_unshared_parameter_count():
    from diffusion.model import parameter_count, shared_width

    shape = {"vocab_size": 87, "max_seq_len": 4, "num_layers": 4, "num_heads": 4}
    unshared = parameter_count(hidden_size=64, **shape)
    width = shared_width(hidden_size=64, **shape)
    assert width > 64 and width % 8 == 0
    shared = parameter_count(hidden_size=width, share_layers=True, **shape)
    assert abs(shared - unshared) / unshared < 0.06  # widths come in steps of 2 * num_heads
    # the next width that splits into heads is further from the target on the side it lies
    for other in (width - 8, width + 8):
        assert abs(parameter_count(hidden_size=other, share_layers=True, **shape) - unshared) >= abs(shared - unshared)
