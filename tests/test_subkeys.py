"""The sub-key rule of every model (`funcml.nn.model`): the sub-tree at param path `P` is
initialized from, and draws its dropout from, `random.fold_in(key, P)`. So the same key gives
the same bits, and adding a layer or a sub-module changes neither the params nor the dropout
masks of the others."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from funcml import random, tree
from funcml.asr.cif import init_cif_predictor
from funcml.asr.decoder import init_nar_decoder
from funcml.asr.encoder import EncoderConfig, encode, init_encoder, init_sanm_block
from funcml.asr.paraformer import ParaformerConfig, init_paraformer
from funcml.nn import model as models
from funcml.nn import transformer as tf
from funcml.nn.attention import init_mha
from funcml.nn.layers import init_conv2d, init_dense
from funcml.nn.reference import CNNConfig, MLPConfig
from funcml.seg.hybrid import UNetTransformerConfig
from funcml.seg.unet import UNetConfig

D, H, FF = 8, 2, 16


def _paraformer(**kw) -> ParaformerConfig:
    enc = dict(input_dim=8, d_model=D, num_heads=H, d_ff=FF, num_layers=2, block="sanm", input_layer="linear",
               fsmn_kernel=3, dropout=0.2)
    enc.update(kw.pop("encoder", {}))
    return ParaformerConfig(vocab_size=12, encoder=EncoderConfig(**enc), decoder_layers=kw.pop("decoder_layers", 1),
                            max_tokens=6, **kw)


def _encoder(**kw) -> EncoderConfig:
    fields = dict(input_dim=12, d_model=D, num_heads=H, d_ff=FF, num_layers=2, conv_channels=4, conv_kernel=3,
                  fsmn_kernel=3, dropout=0.3)
    return EncoderConfig(**{**fields, **kw})


MODELS = {
    "paraformer": _paraformer(ctc=True),
    "unet": UNetConfig(in_channels=1, num_classes=2, depth=2, base_width=4),
    "unet-transformer": UNetTransformerConfig(in_channels=1, num_classes=2, depth=2, base_width=4, num_layers=2,
                                              num_heads=2),
    "mlp": MLPConfig(in_dim=3, hidden=(5, 5), out_dim=2),
    "cnn": CNNConfig(in_channels=1, channels=(4, 8), num_classes=3),
}


# ---------------------------------------------------------------------------- same key, same bits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_same_key_gives_the_same_params_and_another_key_others(name):
    cfg = MODELS[name]
    a, _ = models.init(random.key(3), cfg)
    b, _ = models.init(random.key(3), cfg)
    c, _ = models.init(random.key(4), cfg)
    assert tree.equal(a, b)
    assert not tree.allclose(a, c)


# ------------------------------------------------------------ the path names are the param tree's


def test_paraformer_parts_come_from_the_key_folded_with_their_names(key):
    cfg = _paraformer(ctc=True)
    params, _ = init_paraformer(key, cfg)
    assert tree.equal(params["encoder"], init_encoder(random.fold_in(key, "encoder"), cfg.encoder))
    assert tree.equal(params["predictor"], init_cif_predictor(random.fold_in(key, "predictor"), D,
                                                              kernel_size=cfg.predictor_kernel))
    assert tree.equal(params["decoder"], init_nar_decoder(random.fold_in(key, "decoder"), vocab_size=12, d_model=D,
                                                          num_heads=H, d_ff=FF, num_layers=1))
    assert tree.equal(params["ctc"], init_dense(random.fold_in(key, "ctc"), D, 12))


def test_encoder_layers_and_input_layer_come_from_their_param_paths(key):
    cfg = _encoder(block="sanm", input_layer="conv2d", num_layers=3)
    params = init_encoder(key, cfg)
    assert tree.equal(params["layers"]["2"], init_sanm_block(random.fold_in(key, "layers.2"), D, H, FF,
                                                             fsmn_kernel=3))
    assert tree.equal(params["input"]["conv1"], init_conv2d(random.fold_in(key, "input.conv1"), 1, 4, 3))
    block = params["layers"]["2"]
    k_block = random.fold_in(key, "layers.2")
    assert tree.equal(block["attn"], init_mha(random.fold_in(k_block, "attn"), D, H))
    assert tree.equal(block["attn"]["v"], init_dense(random.fold_in(random.fold_in(k_block, "attn"), "v"), D, D))
    assert tree.equal(block["ffn"]["fc2"], init_dense(random.fold_in(random.fold_in(k_block, "ffn"), "fc2"), FF, D))


def test_the_asr_transformer_encoder_stack_is_the_nn_stack_from_the_same_key(key):
    cfg = _encoder(block="transformer", num_layers=3)
    params = init_encoder(key, cfg)
    stack = tf.init_encoder(key, 3, D, H, FF)
    assert tree.equal({"layers": params["layers"], "ln_f": params["ln_f"]}, stack)


def test_unet_and_mlp_and_cnn_weights_come_from_their_dotted_names(key):
    unet, _ = models.init(key, MODELS["unet"])
    assert tree.equal(unet["enc"]["1"]["conv2"], init_conv2d(random.fold_in(key, "enc.1.conv2"), 8, 8, 3, bias=False))
    mlp, _ = models.init(key, MODELS["mlp"])
    assert tree.equal(mlp["layers"]["1"], init_dense(random.fold_in(key, "layers.1"), 5, 5))
    cnn, _ = models.init(key, MODELS["cnn"])
    assert tree.equal(cnn["head"], init_dense(random.fold_in(key, "head"), 8, 3))
    assert tree.equal(cnn["blocks"]["1"]["conv"], init_conv2d(random.fold_in(key, "blocks.1.conv"), 4, 8, 3,
                                                              bias=False))


def test_subkey_is_fold_in_and_passes_none_through(key):
    assert torch.equal(models.subkey(key, "layers.0"), random.fold_in(key, "layers.0"))
    assert models.subkey(None, "layers.0") is None


# --------------------------------------------------- adding a sub-module changes no other params


def _prefix(params: dict, n: int) -> dict:
    return {str(i): params[str(i)] for i in range(n)}


@pytest.mark.parametrize("block", ["transformer", "conformer", "sanm"])
def test_an_encoder_with_one_more_layer_keeps_the_params_of_the_others(key, block):
    small = init_encoder(key, _encoder(block=block, num_layers=2))
    large = init_encoder(key, _encoder(block=block, num_layers=3))
    assert tree.equal(_prefix(large["layers"], 2), small["layers"])
    assert tree.equal(large["input"], small["input"]) and tree.equal(large["ln_f"], small["ln_f"])


def test_nn_stacks_with_one_more_layer_keep_the_params_of_the_others(key):
    for init in (tf.init_encoder, tf.init_decoder):
        small, large = init(key, 2, D, H, FF), init(key, 3, D, H, FF)
        assert tree.equal(_prefix(large["layers"], 2), small["layers"])


def test_a_paraformer_with_a_ctc_head_or_another_decoder_layer_keeps_every_other_param(key):
    base, _ = init_paraformer(key, _paraformer())
    with_ctc, _ = init_paraformer(key, _paraformer(ctc=True))
    assert tree.equal({k: v for k, v in with_ctc.items() if k != "ctc"}, base)
    deeper, _ = init_paraformer(key, _paraformer(decoder_layers=2))
    assert tree.equal(deeper["encoder"], base["encoder"]) and tree.equal(deeper["predictor"], base["predictor"])
    assert tree.equal(deeper["decoder"]["blocks"]["layers"]["0"], base["decoder"]["blocks"]["layers"]["0"])
    assert tree.equal(deeper["decoder"]["embed"], base["decoder"]["embed"])
    assert tree.equal(deeper["decoder"]["out"], base["decoder"]["out"])
    deeper_encoder, _ = init_paraformer(key, _paraformer(encoder={"num_layers": 3}))
    assert tree.equal(deeper_encoder["decoder"], base["decoder"])
    assert tree.equal(_prefix(deeper_encoder["encoder"]["layers"], 2), base["encoder"]["layers"])


def test_a_block_with_an_extra_sub_module_keeps_the_params_of_the_shared_ones(key):
    # SAN-M is a transformer block plus an FSMN memory; a decoder block adds cross-attention.
    plain = tf.init_encoder_block(key, D, H, FF)
    sanm = init_sanm_block(key, D, H, FF, fsmn_kernel=3)
    assert tree.equal({k: sanm[k] for k in plain}, plain)
    decoder_block = tf.init_decoder_block(key, D, H, FF)
    assert tree.equal(decoder_block["ffn"], plain["ffn"])


def test_the_mlp_with_another_hidden_layer_keeps_its_first_layer(key):
    small, _ = models.init(key, MLPConfig(in_dim=3, hidden=(5,), out_dim=2))
    large, _ = models.init(key, MLPConfig(in_dim=3, hidden=(5, 5), out_dim=2))
    assert tree.equal(large["layers"]["0"], small["layers"]["0"])


# ------------------------------------------------ adding a layer changes no other dropout mask


def _silence(block: dict) -> dict:
    """The block with every residual branch's output projection zeroed: an identity map, in train
    mode too (dropout of zero is zero)."""
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    out = dict(block)
    for attn in ("attn", "self_attn", "cross_attn"):
        if attn in out:
            out[attn] = {**out[attn], **{p: tree.tree_map(zero, out[attn][p]) for p in ("o", "v")}}
    out["ffn"] = {**out["ffn"], "fc2": tree.tree_map(zero, out["ffn"]["fc2"])}
    return out


def _with_identity_layer(params: dict, n: int) -> dict:
    """`params` (n + 1 layers) with its first n layers kept and the last made an identity."""
    layers = {**_prefix(params["layers"], n), str(n): _silence(params["layers"][str(n)])}
    return {**params, "layers": layers}


def test_an_nn_encoder_with_one_more_layer_draws_the_same_dropout_masks_for_the_others(key, getkey):
    x = random.normal(getkey(), (2, 5, D))
    k = getkey()
    small = tf.init_encoder(key, 2, D, H, FF)
    large = _with_identity_layer(tf.init_encoder(key, 3, D, H, FF), 2)
    run = lambda p: tf.encoder(p, x, num_heads=H, dropout_rate=0.3, key=k, train=True)  # noqa: E731
    assert not torch.equal(run(small), tf.encoder(small, x, num_heads=H))  # dropout is on
    assert torch.equal(run(large), run(small))


def test_an_nn_decoder_with_one_more_layer_draws_the_same_dropout_masks_for_the_others(key, getkey):
    x, memory = random.normal(getkey(), (2, 4, D)), random.normal(getkey(), (2, 6, D))
    k = getkey()
    small = tf.init_decoder(key, 1, D, H, FF)
    large = _with_identity_layer(tf.init_decoder(key, 2, D, H, FF), 1)
    run = lambda p: tf.decoder(p, x, memory, num_heads=H, dropout_rate=0.3, key=k, train=True)  # noqa: E731
    assert torch.equal(run(large), run(small))


@pytest.mark.parametrize("block", ["transformer", "sanm"])
def test_an_asr_encoder_with_one_more_layer_draws_the_same_dropout_masks_for_the_others(key, getkey, block):
    x = random.normal(getkey(), (2, 16, 12))
    lengths = torch.tensor([16, 11])
    k = getkey()
    small_cfg, large_cfg = _encoder(block=block, num_layers=2), _encoder(block=block, num_layers=3)
    small = init_encoder(key, small_cfg)
    large = _with_identity_layer(init_encoder(key, large_cfg), 2)
    a, _, _ = encode(small, x, lengths, small_cfg, key=k, train=True)
    b, _, _ = encode(large, x, lengths, large_cfg, key=k, train=True)
    assert not torch.equal(a, encode(small, x, lengths, small_cfg)[0])  # dropout is on
    assert torch.equal(a, b)


def test_the_paraformer_encoder_output_in_training_does_not_depend_on_the_decoder_depth(key, getkey):
    x = {"features": random.normal(getkey(), (2, 14, 8)), "feat_lengths": torch.tensor([14, 9]),
         "target_lengths": torch.tensor([3, 2])}
    k = getkey()
    outs = []
    for layers in (1, 2):
        cfg = _paraformer(decoder_layers=layers)
        params, state = init_paraformer(key, cfg)
        outs.append(models.apply(params, state, x, cfg, key=k, train=True)[0])
    assert torch.equal(outs[0].enc, outs[1].enc) and torch.equal(outs[0].alpha, outs[1].alpha)
    assert not torch.equal(outs[0].logits, outs[1].logits)


def test_the_same_key_gives_the_same_dropout_in_every_model(getkey):
    cfg = dataclasses.replace(MODELS["unet-transformer"], dropout=0.2, transformer_dropout=0.2)
    params, state = models.init(getkey(), cfg)
    x, k = random.normal(getkey(), (2, 1, 8, 8)), getkey()
    a, _ = models.apply(params, state, x, cfg, key=k, train=True)
    b, _ = models.apply(params, state, x, cfg, key=k, train=True)
    c, _ = models.apply(params, state, x, cfg, key=getkey(), train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
