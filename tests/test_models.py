"""Tests of the model zoo ``synflow_plugin.models``.

Models are built at tiny widths and small inputs so the file runs in seconds on two
CPU cores; only vgg16_bn and resnet20 are built at full size, for the parameter counts
and the initialisation statistics.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.fx
from torch import nn

from synflow_plugin.errors import PruningError, PruningTypeError
from synflow_plugin.models import (
    MODELS,
    BasicBlock,
    ConvNet,
    MLP,
    ResNet,
    VGG,
    conv,
    create_model,
    list_models,
    mlp,
    resnet18,
    resnet18_imagenet,
    resnet20,
    resnet50_imagenet,
    vgg11,
    vgg16_bn,
    wide_resnet18,
)

EXPECTED_NAMES = [
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet18",
    "wide_resnet18",
    "resnet18_imagenet",
    "resnet50_imagenet",
    "mlp",
    "conv",
]


def tiny_kwargs(name: str) -> dict:
    """Options that make model ``name`` tiny (a few channels) on a small input."""
    if name.startswith("vgg"):
        return {"width_multiplier": 1 / 16, "input_shape": (3, 16, 16)}
    if name.endswith("_imagenet"):
        return {"width_multiplier": 1 / 16, "input_shape": (3, 32, 32)}
    if "resnet" in name:
        return {"width_multiplier": 1 / 8, "input_shape": (3, 16, 16)}
    if name == "mlp":
        return {"width": 8, "depth": 3, "input_shape": (1, 8, 8)}
    return {"width": 4, "depth": 3, "input_shape": (1, 8, 8)}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny models run faster on one thread, and the CI machine's cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vgg16_bn_cifar100() -> nn.Module:
    torch.manual_seed(0)
    return vgg16_bn(num_classes=100)


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_model_in_order():
    assert list_models() == EXPECTED_NAMES
    assert list(MODELS) == EXPECTED_NAMES
    assert list_models() is not list_models()  # callers may mutate their copy


def test_create_model_builds_the_named_family_and_records_its_arguments():
    model = create_model("resnet20", num_classes=7, input_shape=(3, 20, 24), width_multiplier=0.25)
    assert isinstance(model, ResNet)
    assert model.num_classes == 7
    assert model.input_shape == (3, 20, 24)
    assert model.fc.out_features == 7
    assert isinstance(create_model("VGG11_BN", width_multiplier=0.1), VGG)  # case-insensitive
    assert isinstance(create_model("mlp", width=4), MLP)
    assert isinstance(create_model("conv", input_shape=(1, 40), width=4), ConvNet)


# ----------------------------------------------------------------------- output shapes


@pytest.mark.parametrize(
    ("name", "kwargs", "input_shape", "num_classes"),
    [
        ("vgg11", {"width_multiplier": 0.125}, (3, 32, 32), 10),
        ("vgg19_bn", {"width_multiplier": 0.0625}, (3, 16, 16), 100),
        ("vgg13", {"width_multiplier": 0.0625}, (1, 24, 40), 5),
        ("resnet20", {"width_multiplier": 0.25}, (3, 32, 32), 10),
        ("resnet56", {"width_multiplier": 0.125}, (3, 12, 12), 3),
        ("resnet18", {"width_multiplier": 0.0625}, (3, 16, 16), 200),
        ("wide_resnet18", {"width_multiplier": 0.03125}, (3, 9, 13), 2),
        ("mlp", {}, (1, 28, 28), 10),
        ("mlp", {"depth": 2, "width": 5}, (40,), 4),
        ("conv", {"width": 4}, (1, 40), 10),
        ("conv", {"width": 4}, (1, 8, 8), 10),
        ("conv", {"width": 4, "depth": 4}, (3, 28, 28), 6),
    ],
)
def test_output_shape(name, kwargs, input_shape, num_classes):
    model = create_model(name, num_classes=num_classes, input_shape=input_shape, **kwargs)
    out = model(torch.randn(3, *input_shape))
    assert out.shape == (3, num_classes)
    assert torch.isfinite(out).all()


def test_width_multiplier_scales_every_channel_count_with_minimum_one():
    half = vgg11(width_multiplier=0.5)
    convs = [m.out_channels for m in half.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [32, 64, 128, 128, 256, 256, 256, 256]
    assert half.classifier.in_features == 256
    minimal = vgg11(width_multiplier=1e-3)
    assert {m.out_channels for m in minimal.modules() if isinstance(m, nn.Conv2d)} == {1}
    assert minimal(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_wide_resnet18_doubles_every_channel_count_of_resnet18():
    narrow = resnet18(width_multiplier=1 / 16)
    wide = wide_resnet18(width_multiplier=1 / 16)
    narrow_widths = [m.out_channels for m in narrow.modules() if isinstance(m, nn.Conv2d)]
    wide_widths = [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)]
    assert narrow_widths[0] == 4 and narrow_widths[-1] == 32  # 64 and 512 at width 1/16
    assert wide_widths == [2 * w for w in narrow_widths]
    # stem + 8 blocks x 2 convs + 3 shortcut convs, no max-pool anywhere
    assert len(narrow_widths) == 1 + 16 + 3
    assert not any(isinstance(m, nn.MaxPool2d) for m in narrow.modules())


# -------------------------------------------------------------------- parameter counts


def test_vgg16_bn_cifar100_parameter_count_matches_the_layer_plan(vgg16_bn_cifar100):
    plan = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    expected, in_ch = 0, 3
    for spec in plan:
        if spec == "M":
            continue
        expected += 3 * 3 * in_ch * spec + spec  # conv weight + bias
        expected += 2 * spec  # BatchNorm weight + bias
        in_ch = spec
    expected += 512 * 100 + 100  # the single linear classifier
    assert expected == 14_774_436
    assert count_params(vgg16_bn_cifar100) == expected
    assert sum(isinstance(m, nn.Conv2d) for m in vgg16_bn_cifar100.modules()) == 13
    assert sum(isinstance(m, nn.Linear) for m in vgg16_bn_cifar100.modules()) == 1


def test_resnet20_parameter_count_matches_the_block_plan():
    def bn(c):
        return 2 * c

    expected = 3 * 3 * 3 * 16 + bn(16)  # stem
    in_ch = 16
    for stage, width in enumerate([16, 32, 64]):
        for block in range(3):
            expected += 3 * 3 * in_ch * width + bn(width) + 3 * 3 * width * width + bn(width)
            if stage > 0 and block == 0:  # option-B shortcut: 1x1 conv + BN
                expected += in_ch * width + bn(width)
            in_ch = width
    expected += 64 * 10 + 10
    assert expected == 272_474  # "0.27M"
    model = resnet20()
    assert count_params(model) == expected
    assert sum(isinstance(m, BasicBlock) for m in model.modules()) == 9


def test_mlp_defaults_are_the_papers_fc_network():
    model = mlp(input_shape=(1, 28, 28))
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    assert shapes == [(784, 100)] + [(100, 100)] * 4 + [(100, 10)]
    assert count_params(model) == 784 * 100 + 100 + 4 * (100 * 100 + 100) + 100 * 10 + 10
    no_bias = mlp(input_shape=(1, 28, 28), bias=False)
    assert all(m.bias is None for m in no_bias.modules() if isinstance(m, nn.Linear))
    assert count_params(no_bias) == 784 * 100 + 4 * 100 * 100 + 100 * 10


# ---------------------------------------------------------------------- initialisation


def test_initialisation_zero_biases_and_unit_batchnorm(vgg16_bn_cifar100):
    models = [
        vgg16_bn_cifar100,
        create_model("resnet20", width_multiplier=0.25),
        create_model("mlp", width=8),
        create_model("conv", width=4),
    ]
    checked_bias = checked_bn = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and module.bias is not None:
                assert torch.count_nonzero(module.bias) == 0
                checked_bias += 1
            if isinstance(module, nn.BatchNorm2d):
                assert torch.equal(module.weight, torch.ones_like(module.weight))
                assert torch.equal(module.bias, torch.zeros_like(module.bias))
                checked_bn += 1
    # vgg16_bn: 13 convs + fc; resnet20: fc only; mlp: 6 linears; conv: 2 convs + fc
    assert checked_bias == 14 + 1 + 6 + 3
    assert checked_bn == 13 + 1 + 9 * 2 + 2  # vgg16_bn; resnet20 stem, blocks, shortcuts


def test_resnet_convs_have_no_bias():
    model = create_model("resnet20", width_multiplier=0.25)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    assert model.fc.bias is not None


def test_kaiming_normal_fan_in_weight_statistics(vgg16_bn_cifar100):
    # The last conv of vgg16_bn: 512 -> 512, 3x3, fan_in 4608, 2.4M weights.
    big = [m for m in vgg16_bn_cifar100.modules() if isinstance(m, nn.Conv2d)][-1]
    fan_in = big.in_channels * 3 * 3
    assert fan_in == 4608
    expected_std = math.sqrt(2.0 / fan_in)  # 0.02083
    assert big.weight.std().item() == pytest.approx(expected_std, rel=0.01)
    assert abs(big.weight.mean().item()) < 0.01 * expected_std
    # Linear layers use fan_in too: MNIST mlp first layer has fan_in 784.
    first = mlp(input_shape=(1, 28, 28)).features[0]
    assert first.weight.std().item() == pytest.approx(math.sqrt(2.0 / 784), rel=0.02)


def test_zero_init_residual_zeroes_the_last_bn_of_every_block():
    default = create_model("resnet20", width_multiplier=0.25)
    zeroed = create_model("resnet20", width_multiplier=0.25, zero_init_residual=True)
    blocks = [m for m in zeroed.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    for block in blocks:
        assert torch.count_nonzero(block.bn2.weight) == 0
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    for block in (m for m in default.modules() if isinstance(m, BasicBlock)):
        assert torch.equal(block.bn2.weight, torch.ones_like(block.bn2.weight))
    # With the residual branch silenced an identity block is just relu(x).
    zeroed.eval()
    x = torch.randn(2, 4, 8, 8)
    first = zeroed.stages[0][0]
    assert isinstance(first.shortcut, nn.Identity)
    torch.testing.assert_close(first(x), torch.relu(x))
    zero18 = resnet18(width_multiplier=1 / 16, zero_init_residual=True)
    blocks18 = [m for m in zero18.modules() if isinstance(m, BasicBlock)]
    assert len(blocks18) == 8
    assert all(torch.count_nonzero(block.bn2.weight) == 0 for block in blocks18)


# ------------------------------------------------------------------------ conv network


def test_conv_uses_conv1d_for_sequences_and_conv2d_for_images():
    seq = conv(input_shape=(1, 40))
    seq_convs = [m for m in seq.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [type(m) for m in seq_convs] == [nn.Conv1d, nn.Conv1d]  # depth 3 = 2 convs + fc
    assert [m.out_channels for m in seq_convs] == [32, 32]
    assert seq.classifier.in_features == 32 * 40
    assert seq(torch.randn(2, 1, 40)).shape == (2, 10)

    img = conv(input_shape=(1, 8, 8), depth=4, width=6)
    img_convs = [m for m in img.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
    assert [type(m) for m in img_convs] == [nn.Conv2d] * 3
    assert img.classifier.in_features == 6 * 8 * 8
    assert img(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------- tracing and torch-pruning


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_fx_symbolic_trace_matches_eager(name):
    torch.manual_seed(0)
    kwargs = tiny_kwargs(name)
    model = create_model(name, **kwargs).eval()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(2, *kwargs["input_shape"])
    torch.testing.assert_close(traced(x), model(x))
    ops = {node.op for node in traced.graph.nodes}
    assert "call_module" in ops


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet20", "conv"])
def test_torch_pruning_dependency_graph_prunes_a_channel(name):
    tp = pytest.importorskip("torch_pruning")
    kwargs = tiny_kwargs(name)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(2, *kwargs["input_shape"])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    before = first.out_channels
    group = graph.get_pruning_group(first, tp.prune_conv_out_channels, idxs=[0])
    group.prune()
    assert first.out_channels == before - 1
    assert model(x).shape == (2, 10)


# ----------------------------------------------------------------------------- errors


def test_unknown_model_name_lists_the_valid_names():
    expected = r"unknown model 'vgg17'; expected one of: vgg11, vgg11_bn, vgg13, "
    with pytest.raises(PruningError, match=expected):
        create_model("vgg17")
    with pytest.raises(ValueError, match="wide_resnet18, resnet18_imagenet, resnet50_imagenet, mlp, conv"):
        create_model("resnet")
    with pytest.raises(PruningTypeError, match="model name must be a str"):
        create_model(16)


def test_unknown_option_is_a_pruning_type_error():
    expected = (
        r"model 'mlp' does not take option\(s\) width_multiplier; "
        r"its options are: depth, width, bias"
    )
    with pytest.raises(PruningTypeError, match=expected):
        create_model("mlp", width_multiplier=0.5)


BAD_VALUES = [
    ("vgg11", {"num_classes": 0}, r"num_classes must be a positive int, got 0"),
    ("vgg16", {"input_shape": (32, 32)}, r"vgg16 must have 3 entries .*got \(32, 32\) with 2"),
    (
        "resnet20",
        {"input_shape": (1, 3, 32, 32)},
        r"got \(1, 3, 32, 32\) with 4; it looks like it includes the batch dimension",
    ),
    (
        "vgg16_bn",
        {"input_shape": (3, 8, 8)},
        r"\(3, 8, 8\) is too small for vgg16_bn.*at least 16.*such as \(3, 16, 16\)",
    ),
    ("resnet18", {"input_shape": (3, 32, 4)}, r"too small for resnet18.*at least 8.*\(3, 32, 8\)"),
    ("resnet20", {"input_shape": (3, 0, 32)}, r"only positive sizes, got \(3, 0, 32\)"),
    ("conv", {"input_shape": (40,)}, r"conv must have 2 or 3 entries .*Conv1d"),
    ("mlp", {"input_shape": ()}, r"mlp must have at least one entry"),
    ("mlp", {"depth": 1}, r"depth for mlp must be at least 2 .*got 1"),
    ("conv", {"width": 0}, r"width for conv must be at least 1 .*got 0"),
    ("vgg11", {"width_multiplier": 0.0}, r"width_multiplier for vgg11 must be .* > 0, got 0\.0"),
]

BAD_TYPES = [
    ("resnet20", {"num_classes": 10.0}, r"num_classes must be an int, got 10\.0"),
    ("vgg11", {"input_shape": "3x32x32"}, r"input_shape for vgg11 must be a tuple of ints"),
    ("resnet20", {"width_multiplier": "half"}, r"width_multiplier for resnet20 must be a float"),
    ("mlp", {"width": 2.5}, r"width for mlp must be an int"),
]


@pytest.mark.parametrize(("name", "kwargs", "pattern"), BAD_VALUES)
def test_bad_values_raise_pruning_error_naming_the_value(name, kwargs, pattern):
    with pytest.raises(PruningError, match=pattern) as info:
        create_model(name, **kwargs)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("name", "kwargs", "pattern"), BAD_TYPES)
def test_bad_types_raise_pruning_type_error(name, kwargs, pattern):
    with pytest.raises(PruningTypeError, match=pattern) as info:
        create_model(name, **kwargs)
    assert isinstance(info.value, TypeError)


def test_factories_accept_torch_size_and_lists_as_input_shape():
    model = create_model("resnet20", input_shape=torch.Size([3, 8, 8]), width_multiplier=0.125)
    assert model.input_shape == (3, 8, 8)
    assert create_model("mlp", input_shape=[2, 5], width=3).input_shape == (2, 5)


# ----------------------------------------------------------------------- ImageNet ResNets
def torch_macs(model: nn.Module, input_shape) -> int:
    """Multiply-accumulates of one sample, counted by hooks on a meta-device copy (no compute):
    a convolution costs out positions x kernel elements, a linear layer its weight's size."""
    total = 0

    def hook(module, args, out):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += out[0, 0].numel() * module.weight.numel()
        else:
            total += module.weight.numel()

    model = model.to("meta")
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.empty(1, *input_shape, device="meta"))
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize(("name", "params", "gmacs", "convs", "features"), [
    ("resnet18_imagenet", 11_689_512, 1.814, 20, 512),
    ("resnet50_imagenet", 25_557_032, 4.089, 53, 2048),
])
def test_imagenet_resnets_have_torchvisions_shapes_and_cost(name, params, gmacs, convs, features):
    torch.manual_seed(0)
    model = create_model(name)  # defaults: 1000 classes, 3x224x224
    assert model.input_shape == (3, 224, 224) and model.num_classes == 1000
    # torchvision's resnet18 / resnet50 have exactly these parameter counts
    assert count_params(model) == params
    conv_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(conv_layers) == convs
    assert conv_layers[0].kernel_size == (7, 7) and conv_layers[0].stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d) and model.fc.in_features == features
    assert torch_macs(model, (3, 224, 224)) / 1e9 == pytest.approx(gmacs, abs=0.001)


def test_the_cifar_resnet18_is_documented_as_such_and_costs_15x_more_at_224():
    assert "CIFAR" in resnet18.__doc__ and "resnet18_imagenet" in resnet18.__doc__
    cifar = torch_macs(resnet18(num_classes=1000, input_shape=(3, 224, 224)), (3, 224, 224))
    imagenet = torch_macs(resnet18_imagenet(), (3, 224, 224))
    assert cifar / 1e9 == pytest.approx(27.2, abs=0.05)  # the 3x3 stride-1 stem keeps 224x224
    assert cifar / imagenet == pytest.approx(15.0, abs=0.1)
    assert "torchvision" in resnet50_imagenet.__doc__ and "4.09 GMACs" in resnet50_imagenet.__doc__


def test_imagenet_resnets_run_small_and_refuse_inputs_below_32():
    model = create_model("resnet50_imagenet", num_classes=5, input_shape=(3, 32, 40), width_multiplier=1 / 16)
    assert model(torch.randn(2, 3, 32, 40)).shape == (2, 5)
    block = model.stages[1][0]
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)  # stride on the 3x3 ("v1.5")
    assert block.conv3.out_channels == 4 * block.conv1.out_channels
    with pytest.raises(PruningError, match=r"too small for resnet18_imagenet.*at least 32"):
        create_model("resnet18_imagenet", input_shape=(3, 16, 224))
    zero = create_model("resnet50_imagenet", width_multiplier=1 / 16, zero_init_residual=True, input_shape=(3, 32, 32))
    assert all(float(m.bn3.weight.detach().abs().sum()) == 0 for m in zero.modules() if type(m).__name__ == "Bottleneck")


def test_model_summaries_say_which_resnet18_is_which():
    from synflow_plugin.models import model_summaries

    summaries = model_summaries()
    assert list(summaries) == EXPECTED_NAMES and all(summaries.values())
    assert "CIFAR" in summaries["resnet18"] and "resnet18_imagenet" in summaries["resnet18"]
    assert "224x224" in summaries["resnet18_imagenet"] and "1.81 GMACs" in summaries["resnet18_imagenet"]
    assert "224x224" in summaries["resnet50_imagenet"] and "4.09 GMACs" in summaries["resnet50_imagenet"]
