"""Pure layers and models: each layer is `init_<name>(key, ...) -> params` and `<name>(params, x, ...)`.

    from funcml import nn
    p = nn.init_dense(key, 8, 16)
    y = nn.dense(p, x)                                        # x: [..., 8] -> [..., 16]
    params, state = nn.model.init(key, nn.MLPConfig())        # the model contract
    out, state = nn.model.apply(params, state, x, cfg, key=key, train=True)

Modules: `layers` (dense, convs, embedding, activations, dropout), `init` (initializers),
`norm` (layer/group/instance/batch norm), `posenc` (positional encodings), `attention`
(multi-head attention from the equations), `transformer` (FFN, encoder/decoder blocks),
`model` (the contract and registry), `reference` (a tiny MLP and CNN), `bridge`
(`from_module`: any torch.nn.Module as a pure function), `ensemble` (vmap over members,
per-example gradients).
"""

from . import attention, bridge, ensemble, init, layers, model, norm, posenc, reference, transformer
from .attention import init_mha, make_attention_mask, mha
from .bridge import from_module
from .ensemble import apply_ensemble, ensemble_grad_and_value, init_ensemble, per_example_grads
from .layers import (activation, conv1d, conv2d, conv_transpose2d, dense, depthwise_conv1d, dropout, embedding, gelu,
                     init_conv1d, init_conv2d, init_conv_transpose2d, init_dense, init_depthwise_conv1d, init_embedding,
                     leaky_relu, relu, silu)
from .model import Model, register
from .norm import (batch_norm, group_norm, init_batch_norm, init_group_norm, init_instance_norm, init_layer_norm,
                   instance_norm, layer_norm)
from .posenc import init_learned_posenc, learned_posenc, sinusoidal_1d, sinusoidal_2d
from .reference import CNNConfig, MLPConfig
from .transformer import (TransformerConfig, decoder, decoder_block, encoder, encoder_block, ffn, init_decoder,
                          init_decoder_block, init_encoder, init_encoder_block, init_ffn)

__all__ = [name for name in dir() if not name.startswith("_")]
