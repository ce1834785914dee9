import pytest
import torch
import torch.nn.functional as F

from diffusion.model import Denoiser
from diffusion.sample import exact_match, predict, sample_ar, sample_mdm

MASK, V = 1, 11


class Oracle(torch.nn.Module):
    """Knows the target rows: bidirectionally it predicts position j's token, causally j+1's."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def forward(self, ids, causal=False):
        T = ids.shape[1]
        tgt = self.target[: ids.shape[0]]
        tgt = torch.cat([tgt[:, 1:], tgt[:, -1:]], 1) if causal else tgt
        return 8.0 * F.one_hot(tgt[:, :T], V).float()


def rows(n=6, prompt_len=3, answer_len=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (n, prompt_len + answer_len), generator=g)
    answer = torch.zeros_like(ids, dtype=torch.bool)
    answer[:, prompt_len:] = True
    return ids, answer


@pytest.mark.parametrize("n_steps", [1, 2, 3, 4, 9])
def test_diffusion_sampling_fills_every_answer_position_and_keeps_the_prompt(n_steps):
    torch.manual_seed(0)
    model = Denoiser(vocab_size=V, max_seq_len=7, hidden_size=16, num_layers=1, num_heads=2).eval()
    ids, answer = rows()
    out = sample_mdm(model, ids, answer, n_steps=n_steps, mask_id=MASK, temperature=1.0,
                     generator=torch.Generator().manual_seed(1))
    assert not (out == MASK).any()
    assert torch.equal(out[:, :3], ids[:, :3])
    assert out.shape == ids.shape


def test_an_oracle_gets_every_answer_right_through_both_decoders():
    ids, answer = rows()
    oracle = Oracle(ids)
    mdm = sample_mdm(oracle, ids, answer, n_steps=2, mask_id=MASK)
    ar = sample_ar(oracle, ids, answer, mask_id=MASK)
    assert exact_match(mdm, ids, answer).all() and exact_match(ar, ids, answer).all()
    wrong = ids.clone()
    wrong[0, 5] = 3 if ids[0, 5] != 3 else 4
    assert exact_match(wrong, ids, answer).tolist() == [False] + [True] * 5


def test_confidence_order_commits_the_surest_token_first():
    ids, answer = rows(n=1)

    class Unsure(Oracle):
        def forward(self, ids_, causal=False):
            logits = super().forward(ids_, causal)
            logits[:, 3:6] *= 0.1  # only the last answer position is confident
            return logits

    from diffusers import BlockRefinementScheduler

    sched = BlockRefinementScheduler(block_length=4, num_inference_steps=4, threshold=2.0)
    sched.set_timesteps(4, block_length=4)
    block = torch.full((1, 4), MASK)
    out = sched.step(Unsure(ids)(ids)[:, 3:], 0, block, mask_token_id=MASK)
    assert out.transfer_index.tolist() == [[False, False, False, True]]


def test_predict_refuses_bad_arguments():
    ids, answer = rows()
    with pytest.raises(ValueError, match="n_steps"):
        sample_mdm(Oracle(ids), ids, answer, n_steps=0, mask_id=MASK)
    with pytest.raises(ValueError, match="objective"):
        predict("gpt", Oracle(ids), ids, answer, mask_id=MASK)
    ragged = answer.clone()
    ragged[0, 3] = False
    with pytest.raises(ValueError, match="answer positions"):
        sample_mdm(Oracle(ids), ids, ragged, n_steps=2, mask_id=MASK)


@pytest.mark.parametrize("objective", ["mdm", "ar"])
def test_one_pass_evaluation_matches_the_objective_and_the_sampler(objective):
    # A one-token answer: the fast path's loss and answers equal the objective's and the sampler's.
    from diffusion.evaluate import loss_and_prediction
    from diffusion.objective import objective_loss

    torch.manual_seed(0)
    model = Denoiser(vocab_size=V, max_seq_len=4, hidden_size=32, num_layers=1, num_heads=2,
                     mask_token_id=MASK, init="torch").eval()
    ids, answer = rows(n=64, prompt_len=3, answer_len=1)
    loss, pred = loss_and_prediction(objective, model, ids, answer, MASK, n_steps=1, batch_size=20)
    with torch.no_grad():
        expected = float(objective_loss(objective, model, ids, answer, MASK,
                                        generator=torch.Generator().manual_seed(0)))
    assert loss == pytest.approx(expected, rel=1e-5)
    assert torch.equal(pred, predict(objective, model, ids, answer, mask_id=MASK, n_steps=1))
    assert torch.equal(pred[:, :3], ids[:, :3])  # the prompt is kept


def test_multi_token_answers_still_go_through_the_sampler():
    from diffusion.evaluate import loss_and_prediction

    ids, answer = rows(n=6, answer_len=4)
    loss, pred = loss_and_prediction("mdm", Oracle(ids), ids, answer, MASK, n_steps=4,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.equal(pred, ids) and loss < 0.01
