"""PyTorch side: the model zoo, the channel-wise approximated activation, model surgery."""

from safenet.nn.activation import ChannelActivation, fit_relu_polynomial, range_penalty
from safenet.nn.surgery import (
    LayerSpec,
    activation_config,
    activations,
    apply_config,
    calibrate,
    convert,
    keep_mask,
    set_blend,
    set_layers,
)
from safenet.nn.zoo import ARCHITECTURES, build_model

__all__ = [
    "ARCHITECTURES",
    "ChannelActivation",
    "LayerSpec",
    "activation_config",
    "activations",
    "apply_config",
    "build_model",
    "calibrate",
    "convert",
    "fit_relu_polynomial",
    "keep_mask",
    "range_penalty",
    "set_blend",
    "set_layers",
]
