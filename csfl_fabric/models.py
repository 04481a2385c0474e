"""Model factories, registered in `MODELS`: ``MODELS.build("cnn", input_shape=(1, 28, 28), num_classes=10)``.

Every factory has the signature ``(input_shape, num_classes, **params) -> nn.Module`` with keyword ``params``
that have defaults. ``input_shape`` is one sample's shape without the batch dimension: ``(C, H, W)`` for images,
``(D,)`` (or any shape, flattened) for the models that flatten their input.

Design notes:
    * No Dropout and no in-place activations: the ``cohort`` trainer runs many clients at once with
      ``torch.func``, which must match sequential training exactly; dropout would need per-client randomness.
    * Construction draws only from torch's global generator, so ``torch.manual_seed(s)`` fixes the weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csfl_fabric.registry import MODELS


def forward_flops_per_sample(model: nn.Module, sample: Tensor) -> int:
    """FLOPs of one forward pass on one sample, counted by `torch.utils.flop_counter` (eval mode, no grad)."""
    # Imported here: it imports triton (~85 ms), which `csfl-fabric list` and other model users need not load.
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(sample[:1])
    model.train(was_training)
    return int(counter.get_total_flops())


def _image_shape(input_shape: tuple[int, ...], model: str) -> tuple[int, int, int]:
    """Return ``input_shape`` as ``(C, H, W)`` or raise a ValueError naming ``model``."""
    if len(input_shape) != 3 or any(int(s) <= 0 for s in input_shape):
        raise ValueError(
            f"Expected `input_shape` to be (C, H, W) for model `{model}` but got {tuple(input_shape)}. "
            "Use `logreg` or `mlp` for flat features."
        )
    c, h, w = (int(s) for s in input_shape)
    return c, h, w


def _check_num_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"Expected `num_classes` to be >= 2 but got {num_classes}.")


class Grid(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling to a fixed grid that passes a map already of that size through untouched.

    Pooling a 4x4 map to 4x4 is an identity that still costs a pass forward and one backward (~4 ms of a
    50-client cohort step on digits).
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x`` itself if its last two dims are the output size, else its adaptive average pool."""
        size = self.output_size
        target = size if isinstance(size, tuple) else (size, size)
        return x if all(t is None or t == s for t, s in zip(target, x.shape[-2:], strict=True)) else super().forward(x)


@MODELS.register("logreg")
def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression: flatten + linear.

    The model of FedProx's Synthetic(alpha, beta) experiments (Li et al., "Federated Optimization in
    Heterogeneous Networks", MLSys 2020, https://arxiv.org/abs/1812.06127).
    """
    _check_num_classes(num_classes)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> nn.Module:
    """Multilayer perceptron with two ReLU hidden layers of ``hidden`` units.

    McMahan et al.'s "2NN" (hidden=200), "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.

    Args:
        input_shape: one sample's shape; it is flattened.
        num_classes: output logits.
        hidden: units in each hidden layer.
    """
    _check_num_classes(num_classes)
    if hidden < 1:
        raise ValueError(f"Expected `hidden` to be >= 1 but got {hidden}.")
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class SmallCNN(nn.Module):
    """Two 3x3 conv layers, max-pooling down to about 8x8 or less, a fixed 4x4 grid, two FC layers.

    Shaped after McMahan et al.'s MNIST CNN (AISTATS 2017, https://arxiv.org/abs/1602.05629), shrunk to
    3x3 kernels so that it also works, and trains in seconds, on 8x8 digits.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 32, hidden: int = 128):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        # One pool after the convs, then more until the map is <= 8 on its longer side: 8x8 -> 4, 28 -> 7, 32 -> 8.
        pools, size = 1, max(h, w) // 2
        while size > 8:
            pools, size = pools + 1, size // 2
        self.pools = pools
        self.grid = Grid(4)  # fixed FC input whatever the image size
        self.fc1 = nn.Linear(2 * width * 16, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        # He init keeps the activations' scale through the ReLUs; torch's default init shrinks it ~2.4x a layer,
        # which left the quickstart (few SGD steps per round) at ~80% test accuracy after 50 rounds instead of >90%.
        for layer in (self.conv1, self.conv2, self.fc1):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)  # type: ignore[arg-type]  # these layers have a bias

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        for _ in range(self.pools):
            x = F.max_pool2d(x, 2, ceil_mode=True)  # ceil: odd sizes (7x7) keep their border
        x = self.grid(x).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


@MODELS.register("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32, hidden: int = 128) -> nn.Module:
    """Small CNN for 1x8x8 digits, 1x28x28 MNIST-like and 3x32x32 CIFAR-like images (quickstart model).

    conv3x3(width)-relu-conv3x3(2*width)-relu-maxpool2 (+ more max-pools for larger images), adaptive
    average pool to 4x4, fc(hidden)-relu, fc(num_classes). After McMahan et al., AISTATS 2017,
    https://arxiv.org/abs/1602.05629.

    Args:
        input_shape: ``(C, H, W)``.
        num_classes: output logits.
        width: channels of the first conv (the second has twice as many).
        hidden: units of the hidden FC layer.
    """
    _check_num_classes(num_classes)
    if width < 1 or hidden < 1:
        raise ValueError(f"Expected `width` and `hidden` to be >= 1 but got width={width}, hidden={hidden}.")
    return SmallCNN(_image_shape(input_shape, "cnn"), num_classes, width=width, hidden=hidden)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998).

    conv5x5(6)-pool-conv5x5(16)-pool-fc120-fc84-fc, on a 32x32 field as in the paper, with the modern
    ReLU and max-pooling in place of scaled tanh and trainable subsampling. Images smaller than 28x28 are
    bilinearly resized to 32x32, 28x28 to 31x31 ones are zero-padded to 32x32 (as the paper did for MNIST),
    and larger ones pass through to an adaptive pool that gives the 16x5x5 map the FC layers expect.
    """

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = input_shape
        self.resize = max(h, w) < 28
        pad_h, pad_w = (0, 0) if self.resize else (max(0, 32 - h), max(0, 32 - w))
        # F.pad order: left, right, top, bottom.
        self.pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        self.conv1 = nn.Conv2d(c, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.grid = Grid(5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        if self.resize:
            x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
        elif any(self.pad):
            x = F.pad(x, self.pad)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.grid(x).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


@MODELS.register("lenet5")
def lenet5(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-5 (LeCun et al., Proc. IEEE 1998, https://doi.org/10.1109/5.726791), ReLU + max-pool variant."""
    _check_num_classes(num_classes)
    return LeNet5(_image_shape(input_shape, "lenet5"), num_classes)


def _norm(kind: str, channels: int) -> nn.Module:
    # Two groups as in Hsieh et al. 2020 and Reddi et al. 2021: BatchNorm's running statistics average
    # badly across non-iid clients and need per-client buffers under torch.func.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(2, channels)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a (projected when the shape changes) identity shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = _norm(norm, channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), _norm(norm, channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Return ``relu(F(x) + shortcut(x))``."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max-pool, stages of 64/128/256/512 channels."""

    def __init__(self, in_channels: int, num_classes: int, norm: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = _norm(norm, 64)
        layers: list[nn.Module] = []
        c_in = 64
        for i, c in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers += [BasicBlock(c_in, c, stride, norm), BasicBlock(c, c, 1, norm)]
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@MODELS.register("resnet18")
def resnet18(input_shape: tuple[int, ...], num_classes: int, norm: str = "batch") -> nn.Module:
    """ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), CIFAR variant.

    https://arxiv.org/abs/1512.03385. ``norm="group"`` uses GroupNorm with 2 groups, as in Hsieh et al.,
    "The Non-IID Data Quagmire of Decentralized Machine Learning", ICML 2020, https://arxiv.org/abs/1910.00189,
    and in Reddi et al.'s CIFAR experiments; it suits non-iid clients and the ``cohort`` trainer.

    Args:
        input_shape: ``(C, H, W)``; any size of at least 1x1 works (global average pooling).
        num_classes: output logits.
        norm: ``"batch"`` (BatchNorm2d) or ``"group"`` (GroupNorm(2, C)).
    """
    _check_num_classes(num_classes)
    if norm not in ("batch", "group"):
        raise ValueError(f"Expected `norm` to be one of 'batch', 'group' but got {norm!r}.")
    c, _, _ = _image_shape(input_shape, "resnet18")
    return ResNet18(c, num_classes, norm)


class FemnistCNN(nn.Module):
    """LEAF's FEMNIST CNN: conv5x5(32)-pool-conv5x5(64)-pool (``same`` padding), fc(2048), fc(num_classes)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, hidden: int = 2048):
        super().__init__()
        c, h, w = input_shape
        self.conv1 = nn.Conv2d(c, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(N, num_classes)``."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@MODELS.register("femnist_cnn")
def femnist_cnn(input_shape: tuple[int, ...], num_classes: int, hidden: int = 2048) -> nn.Module:
    """The CNN of LEAF's FEMNIST baseline (``leaf/models/femnist/cnn.py``; 6.6M parameters for 1x28x28, 62 classes).

    Caldas et al., "LEAF: A Benchmark for Federated Settings", 2018, https://arxiv.org/abs/1812.01097.

    Args:
        input_shape: ``(C, H, W)`` with H and W at least 4 (two 2x2 max-pools).
        num_classes: output logits (62 for FEMNIST).
        hidden: units of the hidden FC layer (2048 in LEAF).
    """
    _check_num_classes(num_classes)
    shape = _image_shape(input_shape, "femnist_cnn")
    if min(shape[1:]) < 4 or hidden < 1:
        raise ValueError(f"Expected `input_shape` of at least 4x4 and `hidden` >= 1 but got {shape}, hidden={hidden}.")
    return FemnistCNN(shape, num_classes, hidden)


class CharLSTM(nn.Module):
    """Character embedding, a stacked LSTM, and a linear layer on the last step's output (next-token logits)."""

    def __init__(self, vocab_size: int, num_classes: int, embed_dim: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` from token ids ``(N, L)`` of any integer dtype (datasets store them small)."""
        out, _ = self.lstm(self.embed(x.long()))
        return self.fc(out[:, -1])


@MODELS.register("char_lstm")
def char_lstm(
    input_shape: tuple[int, ...],
    num_classes: int,
    embed_dim: int = 8,
    hidden: int = 256,
    layers: int = 2,
    vocab_size: int | None = None,
) -> nn.Module:
    """LEAF's Shakespeare model: embedding 8, 2 x 256 LSTM, next-character logits over the 80-character vocabulary.

    ``leaf/models/shakespeare/stacked_lstm.py`` (Caldas et al., LEAF, https://arxiv.org/abs/1812.01097), after
    McMahan et al., AISTATS 2017, https://arxiv.org/abs/1602.05629. Inputs are ``(L,)`` token ids. Trained by the
    ``sequential`` backend only (`csfl_fabric.training.cohort.check_cohort_model` says why).

    Args:
        input_shape: ``(L,)``, the sequence length (80 for Shakespeare).
        num_classes: output logits (80 for Shakespeare).
        embed_dim: embedding width.
        hidden: LSTM units per layer.
        layers: stacked LSTM layers.
        vocab_size: input tokens; None: ``num_classes`` (next-token prediction over the input vocabulary).
    """
    _check_num_classes(num_classes)
    if len(input_shape) != 1:
        raise ValueError(f"Expected `input_shape` to be (L,) token ids for model `char_lstm` but got {input_shape}.")
    vocab = num_classes if vocab_size is None else vocab_size
    if min(embed_dim, hidden, layers, vocab) < 1:
        raise ValueError(f"Expected `embed_dim`, `hidden`, `layers` and `vocab_size` >= 1 but got "
                         f"{embed_dim}, {hidden}, {layers}, {vocab}.")
    return CharLSTM(vocab, num_classes, embed_dim, hidden, layers)


def num_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``.

    >>> num_parameters(logreg((60,), 10))
    610
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["char_lstm", "cnn", "femnist_cnn", "lenet5", "logreg", "mlp", "num_parameters", "resnet18"]
