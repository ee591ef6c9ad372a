"""The Paraformer model: NAR decoder, glancing sampler, losses, the model contract, greedy decoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from funcml import random, tree
from funcml.asr.decoder import embed_tokens, glance, init_nar_decoder, nar_decoder
from funcml.asr.encoder import EncoderConfig
from funcml.asr.paraformer import (LossConfig, ParaformerConfig, ParaformerOutput, frame_shift_seconds,
                                   greedy_decode, masked_cross_entropy, paraformer_loss)
from funcml.asr.tokenizer import CharTokenizer
from funcml.asr.toy import ToyConfig, toy_batch, toy_tokenizer
from funcml.errors import ConfigError, PRNGKeyError, ShapeError
from funcml.nn import model as models


def _cfg(**kw) -> ParaformerConfig:
    enc = dict(input_dim=8, d_model=16, num_heads=2, d_ff=32, num_layers=1, block="transformer",
               input_layer="linear", dropout=0.0)
    enc.update(kw.pop("encoder", {}))
    return ParaformerConfig(vocab_size=kw.pop("vocab_size", 12), encoder=EncoderConfig(**enc),
                            decoder_layers=1, max_tokens=kw.pop("max_tokens", 8), **kw)


def _batch(cfg: ParaformerConfig, b: int = 3, t: int = 20, key=None) -> dict:
    k1, k2 = random.split(random.key(7) if key is None else key)
    feats = random.normal(k1, (b, t, cfg.encoder.input_dim))
    lengths = torch.tensor([t, t - 5, t - 9][:b])
    token_lengths = torch.tensor([5, 3, 1][:b])
    tokens = random.randint(k2, (b, cfg.max_tokens), 5, cfg.vocab_size)
    tokens = torch.where(torch.arange(cfg.max_tokens) < token_lengths[:, None], tokens, 0)
    return {"features": feats, "feat_lengths": lengths, "tokens": tokens, "token_lengths": token_lengths}


# ------------------------------------------------------------------------------------ decoder


def test_nar_decoder_returns_logits_per_token_slot():
    p = init_nar_decoder(random.key(0), vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_layers=2)
    q, mem = random.normal(random.key(1), (2, 5, 16)), random.normal(random.key(2), (2, 9, 16))
    logits = nar_decoder(p, q, torch.ones(2, 5, dtype=torch.bool), mem, torch.ones(2, 9, dtype=torch.bool),
                         num_heads=2)
    assert logits.shape == (2, 5, 11)


def test_nar_decoder_is_not_causal_a_later_query_changes_an_earlier_logit():
    p = init_nar_decoder(random.key(0), vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_layers=1)
    q, mem = random.normal(random.key(1), (1, 4, 16)), random.normal(random.key(2), (1, 6, 16))
    ones_q, ones_m = torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    a = nar_decoder(p, q, ones_q, mem, ones_m, num_heads=2)
    q2 = q.clone()
    q2[0, 3] += random.normal(random.key(3), (16,))       # not a constant shift: layer norm removes those
    b = nar_decoder(p, q2, ones_q, mem, ones_m, num_heads=2)
    assert not torch.allclose(a[0, 0], b[0, 0])


def test_nar_decoder_padded_slots_and_frames_do_not_change_valid_logits():
    p = init_nar_decoder(random.key(0), vocab_size=11, d_model=16, num_heads=2, d_ff=32, num_layers=2)
    q, mem = random.normal(random.key(1), (1, 3, 16)), random.normal(random.key(2), (1, 5, 16))
    ref = nar_decoder(p, q, torch.ones(1, 3, dtype=torch.bool), mem, torch.ones(1, 5, dtype=torch.bool), num_heads=2)
    q_pad = torch.cat([q, 100 * torch.ones(1, 4, 16)], 1)
    m_pad = torch.cat([mem, -50 * torch.ones(1, 3, 16)], 1)
    out = nar_decoder(p, q_pad, torch.arange(7)[None] < 3, m_pad, torch.arange(8)[None] < 5, num_heads=2)
    torch.testing.assert_close(out[:, :3], ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


def test_glance_replaces_floor_ratio_times_wrong_positions_among_the_valid_ones():
    b, n, d, v = 2, 6, 4, 7
    queries = torch.zeros(b, n, d)
    target_embeds = torch.ones(b, n, d)
    targets = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 0, 0, 0]])
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    pred = torch.tensor([[1, 0, 0, 0, 0, 6], [0, 0, 0, 0, 0, 0]])        # wrong: 4 and 3
    logits = F.one_hot(pred, v).float()
    mixed, replaced = glance(random.key(3), queries, logits, targets, mask, target_embeds, ratio=0.75)
    assert replaced.sum(-1).tolist() == [3, 2]                           # floor(0.75 * 4), floor(0.75 * 3)
    assert not (replaced & ~mask).any()
    torch.testing.assert_close(mixed, torch.where(replaced[..., None], target_embeds, queries))


def test_glance_ratio_zero_or_a_perfect_first_pass_replaces_nothing():
    targets = torch.tensor([[1, 2, 3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    q, e = torch.zeros(1, 3, 2), torch.ones(1, 3, 2)
    _, r0 = glance(random.key(0), q, F.one_hot(torch.tensor([[0, 0, 0]]), 5).float(), targets, mask, e, ratio=0.0)
    _, r1 = glance(random.key(0), q, F.one_hot(targets, 5).float(), targets, mask, e, ratio=1.0)
    assert not r0.any() and not r1.any()


def test_glance_is_a_pure_function_of_the_key():
    targets = torch.arange(1, 9)[None].repeat(4, 1)
    mask = torch.ones(4, 8, dtype=torch.bool)
    logits = torch.zeros(4, 8, 10)                                         # argmax 0: all wrong
    q, e = torch.zeros(4, 8, 2), torch.ones(4, 8, 2)
    _, a = glance(random.key(5), q, logits, targets, mask, e, ratio=0.5)
    _, b = glance(random.key(5), q, logits, targets, mask, e, ratio=0.5)
    _, c = glance(random.key(6), q, logits, targets, mask, e, ratio=0.5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum(-1).tolist() == [4, 4, 4, 4]


def test_glance_rejects_a_ratio_outside_zero_one():
    with pytest.raises(ConfigError, match="ratio"):
        glance(random.key(0), torch.zeros(1, 2, 2), torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long),
               torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 2), ratio=1.5)


# ------------------------------------------------------------------------------------- losses


def test_masked_cross_entropy_equals_torch_cross_entropy_with_label_smoothing():
    logits = random.normal(random.key(0), (3, 5, 9))
    targets = random.randint(random.key(1), (3, 5), 0, 9)
    mask = torch.arange(5)[None] < torch.tensor([[5], [2], [4]])
    ref = F.cross_entropy(logits[mask], targets[mask], label_smoothing=0.1)
    torch.testing.assert_close(masked_cross_entropy(logits, targets, mask, label_smoothing=0.1), ref)
    ref0 = F.cross_entropy(logits.reshape(-1, 9), torch.where(mask, targets, -100).reshape(-1), ignore_index=-100)
    torch.testing.assert_close(masked_cross_entropy(logits, targets, mask), ref0)


def test_masked_cross_entropy_ignores_garbage_targets_on_padding_and_an_empty_mask_gives_zero():
    logits = random.normal(random.key(0), (2, 3, 4))
    mask = torch.tensor([[True, False, False], [True, True, False]])
    a = masked_cross_entropy(logits, torch.tensor([[1, 99, -7], [2, 3, 1000]]), mask)
    b = masked_cross_entropy(logits, torch.tensor([[1, 0, 0], [2, 3, 0]]), mask)
    assert torch.equal(a, b)
    assert float(masked_cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))) == 0


def test_masked_cross_entropy_gradcheck_float64():
    logits = random.normal(random.key(0), (2, 3, 4), dtype=torch.float64).requires_grad_()
    targets = torch.tensor([[1, 2, 0], [3, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert torch.autograd.gradcheck(lambda x: masked_cross_entropy(x, targets, mask, label_smoothing=0.2), (logits,))


def test_masked_cross_entropy_names_a_shape_mismatch():
    with pytest.raises(ShapeError, match="targets"):
        masked_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------ model contract


def test_apply_with_target_lengths_fires_exactly_the_targets():
    cfg = _cfg()
    params, state = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    x = {"features": batch["features"], "feat_lengths": batch["feat_lengths"], "target_lengths": batch["token_lengths"]}
    out, new_state = models.apply(params, state, x, cfg)
    assert isinstance(out, ParaformerOutput) and new_state == {}
    assert out.logits.shape == (3, cfg.max_tokens, cfg.vocab_size)
    assert out.token_lengths.tolist() == [5, 3, 1]
    assert out.token_mask.sum(-1).tolist() == [5, 3, 1]
    assert out.enc.shape[:2] == out.alpha.shape == out.enc_mask.shape
    assert out.enc_lengths.tolist() == [20, 15, 11]
    assert out.ctc_logits is None


def test_apply_in_inference_counts_tokens_from_the_weights():
    cfg = _cfg()
    params, state = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    out, _ = models.apply(params, state, {"features": batch["features"], "feat_lengths": batch["feat_lengths"]}, cfg)
    expected = torch.floor(out.alpha.sum(-1) + cfg.tail_threshold + 1e-3).clamp(max=cfg.max_tokens).long()
    assert out.token_lengths.tolist() == expected.tolist()


def test_predict_eos_fires_one_more_token_and_scores_eos_there():
    cfg = _cfg(predict_eos=True)
    params, _ = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    x = {"features": batch["features"], "feat_lengths": batch["feat_lengths"], "target_lengths": batch["token_lengths"]}
    out, _ = models.apply(params, {}, x, cfg)
    assert out.token_lengths.tolist() == [6, 4, 2]
    loss, m = paraformer_loss(params, batch, cfg, LossConfig(glance_ratio=0.0), key=random.key(1))
    assert torch.isfinite(loss)


def test_apply_rejects_a_wrong_feature_dimension_and_a_non_dict_input():
    cfg = _cfg()
    params, _ = models.init(random.key(0), cfg)
    with pytest.raises(ShapeError, match="x"):
        models.apply(params, {}, {"features": torch.zeros(1, 20, 9), "feat_lengths": torch.tensor([20])}, cfg)
    with pytest.raises(ShapeError, match="features"):
        models.apply(params, {}, torch.zeros(1, 20, 8), cfg)


def test_train_mode_with_dropout_needs_a_key():
    cfg = _cfg(encoder={"dropout": 0.1})
    params, _ = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    with pytest.raises(PRNGKeyError):
        models.apply(params, {}, {"features": batch["features"], "feat_lengths": batch["feat_lengths"]}, cfg, train=True)
    with pytest.raises(PRNGKeyError):
        paraformer_loss(params, batch, cfg, key=None)


def test_config_rejects_bad_values_naming_them():
    with pytest.raises(ConfigError, match="tail_threshold"):
        _cfg(tail_threshold=1.0)
    with pytest.raises(ConfigError, match="max_tokens"):
        _cfg(max_tokens=0)
    with pytest.raises(ConfigError, match="eos_id"):
        _cfg(vocab_size=3)
    with pytest.raises(ConfigError, match="glance_ratio"):
        LossConfig(glance_ratio=2.0)


# ------------------------------------------------------------------------------------ the loss


def test_loss_is_finite_and_every_parameter_gets_a_gradient():
    cfg = _cfg(ctc=True)
    params, _ = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    lc = LossConfig(ctc_weight=0.5, glance_ratio=0.75)
    grads, (loss, m) = torch.func.grad_and_value(
        lambda p: paraformer_loss(p, batch, cfg, lc, key=random.key(2)), has_aux=True)(params)
    assert torch.isfinite(loss)
    assert set(m) == {"ce", "quantity", "ctc", "token_acc", "glanced"}
    assert float(m["ctc"]) > 0
    dead = [name for name, g in tree.flatten_with_names(grads).items() if not torch.isfinite(g).all() or not g.abs().sum() > 0]
    assert dead == []


def test_loss_is_the_weighted_sum_of_its_terms():
    cfg = _cfg(ctc=True)
    params, _ = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    lc = LossConfig(ce_weight=0.7, quantity_weight=0.2, ctc_weight=0.4, glance_ratio=0.0)
    loss, m = paraformer_loss(params, batch, cfg, lc, key=random.key(1))
    torch.testing.assert_close(loss, 0.7 * m["ce"] + 0.2 * m["quantity"] + 0.4 * m["ctc"])


def test_loss_same_key_same_bits_and_ctc_weight_without_a_head_is_an_error():
    cfg = _cfg(encoder={"dropout": 0.1})
    params, _ = models.init(random.key(0), cfg)
    batch = _batch(cfg)
    a, _ = paraformer_loss(params, batch, cfg, key=random.key(4))
    b, _ = paraformer_loss(params, batch, cfg, key=random.key(4))
    c, _ = paraformer_loss(params, batch, cfg, key=random.key(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ConfigError, match="CTC head"):
        paraformer_loss(params, batch, cfg, LossConfig(ctc_weight=0.3), key=random.key(4))


def test_100_toy_steps_cut_the_loss_by_half_and_raise_token_accuracy():
    from funcml import optim
    from funcml.train import init_train_state, make_train_step

    toy = ToyConfig.preset("easy", feat_dim=8, max_len=6)
    tok = toy_tokenizer(toy)
    cfg = _cfg(vocab_size=tok.vocab_size, max_tokens=8)
    params, state = models.init(random.key(0), cfg)

    def get_batch(step):
        b = toy_batch(random.fold_in(random.key(1), step), 16, toy, tok)
        tokens = F.pad(b["tokens"], (0, cfg.max_tokens - b["tokens"].shape[1]))
        return {"features": b["features"], "feat_lengths": b["feat_lengths"], "tokens": tokens,
                "token_lengths": b["token_lengths"]}

    def loss_fn(p, s, batch, key):
        loss, m = paraformer_loss(p, batch, cfg, LossConfig(), key=key)
        return loss, (m, s)

    step = make_train_step(loss_fn, optim.adamw(3e-3), compile=False)
    ts = init_train_state(params, state, optim.adamw(3e-3), random.key(2))
    history = []
    for i in range(100):
        ts, m = step(ts, get_batch(i))
        history.append((float(m["loss"]), float(m["token_acc"])))
    first = sum(h[0] for h in history[:5]) / 5
    last = sum(h[0] for h in history[-5:]) / 5
    acc0 = sum(h[1] for h in history[:5]) / 5
    acc1 = sum(h[1] for h in history[-5:]) / 5
    assert last < first / 2, (first, last)
    assert acc1 > acc0 + 0.3, (acc0, acc1)


@pytest.mark.slow
@pytest.mark.compile
def test_the_train_step_compiles_as_one_graph_and_matches_eager():
    from funcml import optim
    from funcml.train import init_train_state, make_train_step

    cfg = _cfg()
    params, state = models.init(random.key(0), cfg)
    batch = _batch(cfg)

    def loss_fn(p, s, b, key):
        loss, m = paraformer_loss(p, b, cfg, LossConfig(glance_ratio=0.5), key=key)
        return loss, (m, s)

    tx = optim.sgd(1e-2)  # linear in the grads: inductor's reassociated sums stay within tolerance (Adam
    ts = init_train_state(params, state, tx, random.key(2))  # turns rounding noise in tiny grads into lr-size steps)
    eager = make_train_step(loss_fn, tx, compile=False)
    compiled = make_train_step(loss_fn, tx, compile=True)
    ts_e, m_e = eager(ts, batch)
    ts_c, m_c = compiled(ts, batch)
    torch.testing.assert_close(m_c["loss"], m_e["loss"], atol=1e-5, rtol=1e-5)
    assert tree.allclose(ts_c.params, ts_e.params, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ decoding


def test_greedy_decode_drops_specials_and_times_tokens_from_firing_frames():
    tok = CharTokenizer(tuple("ab "))                    # ids: 5 a, 6 b, 7 space; 3 = <eos>
    ids = torch.tensor([[5, 7, 6, 3, 0], [6, 0, 0, 0, 0]])
    out = ParaformerOutput(
        logits=F.one_hot(ids, tok.vocab_size).float(), token_lengths=torch.tensor([4, 1]),
        token_mask=torch.tensor([[1, 1, 1, 1, 0], [1, 0, 0, 0, 0]]).bool(), alpha=torch.zeros(2, 10),
        fire_positions=torch.tensor([[1, 3, 6, 9, -1], [4, -1, -1, -1, -1]]), enc=torch.zeros(2, 10, 4),
        enc_lengths=torch.tensor([10, 6]), enc_mask=torch.ones(2, 10, dtype=torch.bool), ctc_logits=None)
    a, b = greedy_decode(out, tok, frame_shift_s=0.04)
    assert a.text == "a b" and a.tokens == ["a", " ", "b"] and a.token_ids == [5, 7, 6]
    assert a.starts == [0.0, 0.08, 0.16] and a.ends == [0.08, 0.16, 0.28]
    assert b.text == "b" and b.starts == [0.0] and b.ends == [0.2]


def test_greedy_decode_rejects_a_tokenizer_of_another_size():
    out = ParaformerOutput(torch.zeros(1, 2, 9), torch.tensor([1]), torch.ones(1, 2, dtype=torch.bool),
                           torch.zeros(1, 3), torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, 4),
                           torch.tensor([3]), torch.ones(1, 3, dtype=torch.bool), None)
    with pytest.raises(ShapeError, match="tokenizer"):
        greedy_decode(out, CharTokenizer(tuple("ab")), frame_shift_s=0.01)


def test_frame_shift_follows_the_input_layer_and_lfr():
    conv = EncoderConfig(input_layer="conv2d")
    lin = EncoderConfig(input_layer="linear", input_dim=560)
    assert math.isclose(frame_shift_seconds(10.0, 1, conv), 0.04)
    assert math.isclose(frame_shift_seconds(10.0, 6, lin), 0.06)
