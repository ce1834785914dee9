import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from diffusion.model import Denoiser
from diffusion.objective import ar_loss, mask_tokens, mdm_loss, mdm_loss_given, sample_t

MASK = 1


def tiny_model():
    torch.manual_seed(0)
    return Denoiser(vocab_size=9, max_seq_len=5, hidden_size=16, num_layers=1, num_heads=2).eval()


def log_probs(model, seq):
    """log p(token | seq) at every position, [MASK] excluded from the support."""
    logits = model(seq[None])[0].clone()
    logits[:, MASK] = -math.inf
    return F.log_softmax(logits, dim=-1)


def test_loss_matches_a_per_example_reference_for_given_noise():
    model = tiny_model()
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 3, 4, 2], [2, 5, 6, 0, 0]])
    answer = torch.tensor([[0, 0, 1, 1, 1]] * 3, dtype=torch.bool)
    t = torch.tensor([0.2, 0.5, 0.9])
    masked = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 1, 1, 1], [0, 0, 0, 1, 0]], dtype=torch.bool)
    with torch.no_grad():
        got = mdm_loss_given(model, ids, answer, t, masked, MASK)
        total = 0.0
        for b in range(3):
            noisy = [MASK if masked[b, j] else int(ids[b, j]) for j in range(5)]
            lp = log_probs(model, torch.tensor(noisy))
            nll = sum(-float(lp[j, ids[b, j]]) for j in range(5) if masked[b, j])
            total += nll / float(t[b]) / 3  # 3 maskable (answer) positions per row
    assert abs(float(got) - total / 3) < 1e-5


@pytest.mark.parametrize("full_sequence", [False, True])
@pytest.mark.parametrize("estimator", ["t", "count"])
def test_loss_is_an_unbiased_estimate_of_the_exact_elbo(estimator, full_sequence):
    """With t ~ U(0,1) and masks ~ Bernoulli(t), E[loss] = sum over mask sets S of
    Beta(|S|, L-|S|+1) * sum_{j in S} -log p(x_j | x with S masked), computed by enumeration."""
    model = tiny_model()
    x = torch.tensor([3, 4, 5, 6, 7])
    answer_pos = [0, 1, 2, 3, 4] if full_sequence else [2, 3, 4]  # full_sequence: the prompt too
    L = len(answer_pos)
    exact = 0.0
    with torch.no_grad():
        for k in range(1, L + 1):
            weight = math.factorial(k - 1) * math.factorial(L - k) / math.factorial(L)
            for subset in itertools.combinations(answer_pos, k):
                noisy = x.clone()
                noisy[list(subset)] = MASK
                lp = log_probs(model, noisy)
                exact += weight * sum(-float(lp[j, x[j]]) for j in subset)
        exact /= L  # per maskable token, as mdm_loss reports it
        n = 20000
        ids = x.repeat(n, 1)
        answer = torch.zeros(n, 5, dtype=torch.bool)
        answer[:, [2, 3, 4]] = True
        estimate = float(mdm_loss(model, ids, answer, MASK, estimator=estimator, eps=1e-6,
                                  full_sequence=full_sequence, generator=torch.Generator().manual_seed(0)))
    assert abs(estimate - exact) / exact < 0.03, (estimate, exact)


def test_stratified_t_covers_every_slice_once():
    t = sample_t(8, eps=0.0, generator=torch.Generator().manual_seed(3))
    slices = sorted((t * 8).floor().long().tolist())
    assert slices == list(range(8))


def test_prompt_is_never_masked_unless_full_sequence():
    ids = torch.full((64, 5), 5)
    answer = torch.tensor([[0, 0, 1, 1, 1]] * 64, dtype=torch.bool)
    t = torch.full((64,), 0.999)
    g = torch.Generator().manual_seed(0)
    noisy, masked = mask_tokens(ids, answer, t, MASK, generator=g)
    assert not masked[:, :2].any() and masked[:, 2:].all()
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), MASK))
    _, masked_full = mask_tokens(ids, torch.ones_like(answer), t, MASK, generator=g)
    assert masked_full[:, :2].any()


def mask_loving_model():
    """A model whose largest logit is [MASK] by a wide margin at every position. (Setting only the head
    row is not enough: the final LayerNorm's output sums to ~0, so that logit would stay ~0.)"""
    model = tiny_model()
    with torch.no_grad():
        model.norm.bias.fill_(1.0)
        model.head.weight[MASK] = 1.0  # logit ~ hidden_size (16) for [MASK], ~0 for the rest
    return model


def test_a_model_that_prefers_mask_still_never_predicts_it():
    from diffusion.sample import sample_ar, sample_mdm

    model = mask_loving_model()
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 3, 4, 2]])
    answer = torch.tensor([[0, 0, 1, 1, 1]] * 2, dtype=torch.bool)
    with torch.no_grad():
        raw = model(ids)
        top2 = raw.topk(2, dim=-1).values
        assert (raw.argmax(-1) == MASK).all() and ((top2[..., 0] - top2[..., 1]) > 5).all()
        # Losses: [MASK] is out of the support, so they equal the references that exclude it.
        masked = answer.clone()
        got = float(mdm_loss_given(model, ids, answer, torch.tensor([1.0, 1.0]), masked, MASK))
        ref = []
        for b in range(2):
            noisy = torch.where(masked[b], torch.tensor(MASK), ids[b])
            lp = log_probs(model, noisy)
            ref.append(sum(-float(lp[j, ids[b, j]]) for j in range(2, 5)) / 3)
        assert abs(got - sum(ref) / 2) < 1e-4
        ar_ref = []
        for b in range(2):
            for j in range(2, 5):
                logits = model(ids[b:b + 1, :j], causal=True)[0, -1].clone()
                logits[MASK] = -math.inf
                ar_ref.append(-float(F.log_softmax(logits, -1)[ids[b, j]]))
        assert abs(float(ar_loss(model, ids, answer, MASK)) - sum(ar_ref) / len(ar_ref)) < 1e-4
        # Samplers: every answer position gets a real token.
        for out in (sample_mdm(model, ids, answer, n_steps=2, mask_id=MASK, temperature=1.0,
                               generator=torch.Generator().manual_seed(0)),
                    sample_ar(model, ids, answer, mask_id=MASK)):
            assert not (out[:, 2:] == MASK).any()


def test_rows_with_no_maskable_token_give_no_nan_and_do_not_count():
    from diffusion.objective import mask_count

    model = tiny_model()
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 3, 4, 2]])
    maskable = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    masked, frac = mask_count(maskable, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(frac).all() and not masked[1].any() and masked[0].any()
    with torch.no_grad():
        for estimator in ("t", "count"):
            loss = mdm_loss(model, ids, maskable, MASK, estimator=estimator,
                            generator=torch.Generator().manual_seed(0))
            assert torch.isfinite(loss)
        # The empty row adds nothing: the loss is the other row's.
        t, pattern = torch.tensor([0.5, 0.5]), torch.tensor([[0, 0, 1, 0, 1], [0] * 5], dtype=torch.bool)
        both = mdm_loss_given(model, ids, maskable, t, pattern, MASK)
        alone = mdm_loss_given(model, ids[:1], maskable[:1], t[:1], pattern[:1], MASK)
        assert torch.allclose(both, alone)
        nothing = mdm_loss(model, ids[1:], maskable[1:], MASK, estimator="count")
        assert float(nothing) == 0.0


@pytest.mark.parametrize("full_sequence", [False, True])
def test_ar_loss_matches_left_to_right_reference(full_sequence):
    """The answer's tokens, each from everything before it; `full_sequence`: every token after the first."""
    model = tiny_model()
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 3, 3, 4, 0]])
    answer = torch.tensor([[0, 0, 1, 1, 1]] * 2, dtype=torch.bool)
    with torch.no_grad():
        got = float(ar_loss(model, ids, answer, MASK, full_sequence=full_sequence))
        nlls = []
        for b in range(2):
            for j in range(1 if full_sequence else 2, 5):
                logits = model(ids[b:b + 1, :j], causal=True)[0, -1].clone()
                logits[MASK] = -math.inf  # [MASK] is never a target
                nlls.append(-float(F.log_softmax(logits, -1)[ids[b, j]]))
    assert abs(got - sum(nlls) / len(nlls)) < 1e-5


def test_count_estimator_masks_between_one_and_all_answer_positions():
    from diffusion.objective import mask_count

    answer = torch.tensor([[0, 0, 1, 1, 1]] * 300, dtype=torch.bool)
    masked, frac = mask_count(answer, generator=torch.Generator().manual_seed(0))
    k = masked.sum(1)
    assert not masked[:, :2].any()
    assert sorted(set(k.tolist())) == [1, 2, 3] and torch.allclose(frac, k / 3)


def test_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="estimator"):
        mdm_loss(tiny_model(), torch.zeros(1, 5, dtype=torch.long), torch.ones(1, 5, dtype=torch.bool),
                 MASK, estimator="magic")
