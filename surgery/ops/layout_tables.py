"""What `convert_layout` knows about Keras and torch layers, as data.

Keras class names and automatic layer names -> kinds, the classes refused by name, the layers
a Flatten's output passes through, and each kind's (Keras param, torch param) pairs.
"""

from __future__ import annotations

# Keras class_name (model_config) -> kind. Kinds decide the axes and the names.
KERAS_CLASSES: dict[str, str] = {
    **dict.fromkeys(("Conv1D", "Conv2D", "Conv3D", "Convolution1D", "Convolution2D", "Convolution3D"), "conv"),
    **dict.fromkeys(("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose", "Deconvolution2D", "Deconvolution3D"), "transposed"),
    **dict.fromkeys(("DepthwiseConv1D", "DepthwiseConv2D"), "depthwise"),
    "Dense": "dense",
    **dict.fromkeys(("BatchNormalization", "SyncBatchNormalization"), "batchnorm"),
    "LayerNormalization": "norm",
    "PReLU": "prelu",
    "Embedding": "embedding",
    "Flatten": "flatten",
}
# Keras classes with no one-module torch equivalent: refused by name.
KERAS_REFUSED: dict[str, str] = {
    **dict.fromkeys(("SeparableConv1D", "SeparableConv2D"), "it is a depthwise and a pointwise conv; torch needs two modules"),
    **dict.fromkeys(("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "Bidirectional"), "recurrent weights are gated and ordered differently in torch"),
    **dict.fromkeys(("MultiHeadAttention", "EinsumDense"), "einsum weights have no fixed torch layout"),
}
# Layers a Flatten's output can pass through unchanged on its way to a Dense.
KERAS_PASS_THROUGH = frozenset(
    ("Dropout", "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization")
)
# Keras's automatic layer names, for files without a model_config. First match wins.
KERAS_AUTO_NAMES: tuple[tuple[str, str], ...] = (
    ("depthwise_conv*", "depthwise"),
    ("conv*d_transpose*", "transposed"),
    ("p_re_lu*", "prelu"),
    ("batch_normalization*", "batchnorm"),
    ("layer_normalization*", "norm"),
    ("embedding*", "embedding"),
)
TORCH_AUTO_NAMES: tuple[tuple[str, str], ...] = (("*prelu*", "prelu"), ("*p_re_lu*", "prelu"))
# A Permute between the last conv and a Flatten changes the flatten order (MTCNN's R-Net and O-Net,
# ported from Caffe: conv3 -> prelu3 -> permute -> flatten3 -> fc4). Files without a model_config
# show it only by its name in layer_names: Keras's automatic name for the class.
KERAS_PERMUTE_NAMES = ("permute*",)
NO_REORDER = "none"  # --flatten-shape LAYER=none: this Dense's inputs are already in the torch order
# kind -> ((Keras param, torch param), ...) in Keras's own weight order. The first pair
# naming a torch param is the one used going back to Keras.
PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "conv": (("kernel", "weight"), ("bias", "bias")),
    "transposed": (("kernel", "weight"), ("bias", "bias")),
    "depthwise": (("depthwise_kernel", "weight"), ("kernel", "weight"), ("bias", "bias")),
    "dense": (("kernel", "weight"), ("bias", "bias")),
    "batchnorm": (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"), ("moving_variance", "running_var")),
    "norm": (("gamma", "weight"), ("beta", "bias")),
    "prelu": (("alpha", "weight"),),
    "embedding": (("embeddings", "weight"),),
}
# Parameter names that decide a Keras layer's kind by themselves.
KERAS_PARAM_KINDS: tuple[tuple[str, str], ...] = (
    ("moving_mean", "batchnorm"), ("depthwise_kernel", "depthwise"), ("alpha", "prelu"), ("embeddings", "embedding"), ("gamma", "norm"), ("beta", "norm"),
)
_KERNELS = ("conv", "transposed", "depthwise")
_PER_CHANNEL = ("prelu", "batchnorm")  # layers that keep a conv's feature map as it is
