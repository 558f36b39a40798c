"""The model contract, checked on every registered arch (timm style), and exact analytic costs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blockswap_zoo import Genotype, build_model, create_model, list_models
from blockswap_zoo.registry import get_arch

ALL = list_models()


def small_input(name: str, batch: int = 2) -> torch.Tensor:
    """A small input: CIFAR size for WRNs, 64x64 for ResNets (enough for 4 stages)."""
    size = 32 if name.startswith("wrn") else 64
    return torch.randn(batch, get_arch(name).in_chans, size, size)


@pytest.mark.parametrize("name", ALL)
def test_contract_forward_backward(name: str) -> None:
    model = create_model(name)
    x = small_input(name)
    out = model(x)
    assert out.shape == (2, get_arch(name).num_classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.num_classes == get_arch(name).num_classes
    assert model.genotype == get_arch(name).genotype


@pytest.mark.parametrize("name", ALL)
def test_intermediates_match_feature_info(name: str) -> None:
    model = create_model(name).eval()
    x = small_input(name)
    final, feats = model.forward_intermediates(x)
    assert len(feats) == len(model.feature_info)
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape[1] == info["num_chs"]
        assert f.shape[-1] == x.shape[-1] // info["reduction"]
        assert model.get_submodule(info["module"]) is not None
    assert torch.allclose(model.forward_head(final), model(x), atol=1e-5)
    assert final.shape[1] == model.num_features
    only = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
    assert len(only) == 1 and torch.equal(only[0], feats[-1])
    assert model.forward_head(final, pre_logits=True).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier(name: str) -> None:
    model = create_model(name)
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(small_input(name)).shape == (2, 7)
    assert model.get_classifier().out_features == 7
    model.reset_classifier(0)
    assert model(small_input(name)).shape == (2, model.num_features)


@pytest.mark.parametrize("name", ALL)
def test_analytic_params_and_macs(name: str) -> None:
    arch = get_arch(name)
    model = create_model(name)
    assert arch.genotype.num_params(arch.num_classes, arch.in_chans) == sum(p.numel() for p in model.parameters())
    x = small_input(name, batch=1)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    assert counter.get_total_flops() == 2 * arch.genotype.macs(arch.num_classes, arch.in_chans, x.shape[-2:])


@pytest.mark.parametrize(
    ("backbone", "classes", "chans", "size"), [("wrn_16_1", 7, 1, 28), ("wrn_22_3", 100, 3, 40), ("wrn_10_4", 2, 4, 20)]
)
def test_any_wrn_geometry(backbone: str, classes: int, chans: int, size: int) -> None:
    """Any depth 6n+4, width, channel count, input size and class count builds and counts exactly."""
    g = Genotype(
        backbone, tuple(["BG(2,M/2)", "G(4)", "S", "B(2)"] * 6)[: Genotype.uniform(backbone).backbone_spec.num_blocks]
    )
    model = build_model(g, num_classes=classes, in_chans=chans)
    x = torch.randn(1, chans, size, size)
    assert model(x).shape == (1, classes)
    assert g.num_params(classes, chans) == sum(p.numel() for p in model.parameters())
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    assert counter.get_total_flops() == 2 * g.macs(classes, chans, size)


def test_paper_cifar_genotypes_match_reference_counts(reference_dir) -> None:
    expected = {
        "bs150k": 162_202, "bs200k": 217_050, "bs250k": 289_226, "bs400k": 404_250,
        "bs500k": 555_962, "bs800k": 811_370, "bs1.6m": 1_645_018,
    }  # fmt: skip
    for stem, params in expected.items():
        g = Genotype.from_reference_csv(reference_dir / "genotypes" / f"{stem}.csv")
        assert g.num_params(10, 3) == params, stem
        assert sum(p.numel() for p in build_model(g).parameters()) == params, stem
    assert Genotype.uniform("wrn_40_2").num_params(10, 3) == 2_243_546
    assert round(Genotype.uniform("wrn_40_2").macs(10, 3, 32) / 1e6, 1) == 327.6


def test_registered_paper_students_are_the_reference_genotypes(reference_dir) -> None:
    """The registry records the paper's genotypes in our notation; they equal the reference CSVs."""
    pairs = {
        "bs150k": "wrn_40_2_bs162k", "bs200k": "wrn_40_2_bs217k", "bs250k": "wrn_40_2_bs289k",
        "bs400k": "wrn_40_2_bs404k", "bs500k": "wrn_40_2_bs556k", "bs800k": "wrn_40_2_bs811k",
        "bs1.6m": "wrn_40_2_bs1645k", "bs_imagenet_1": "resnet34_bs3083k", "bs_imagenet_2": "resnet34_bs8194k",
    }  # fmt: skip
    for stem, name in pairs.items():
        assert get_arch(name).genotype == Genotype.from_reference_csv(reference_dir / "genotypes" / f"{stem}.csv")
        arch = get_arch(name)
        assert name.endswith(f"bs{round(arch.params / 1000)}k"), "names carry the parameter count"


def test_blocks_have_their_own_shape() -> None:
    """The reference's masked-path trap: a stage starting with a bottleneck keeps its S blocks basic."""
    g = get_arch("wrn_40_2_bs811k").genotype
    model = build_model(g)
    second = model.stages[0][1]  # 'S' after a 'B(4)'
    assert hasattr(second.branch, "conv2") and second.branch.conv1.kernel_size == (3, 3)
    assert g.num_params() == 811_370  # the trap builds 837,034


def test_torchvision_resnet34_state_dict_round_trip() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    tv = torchvision.models.resnet34(weights=None).eval()
    for m in tv.modules():  # non-trivial BN statistics so the comparison means something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    ours = create_model("resnet34").eval()
    assert set(ours.state_dict()) == set(tv.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), tv(x))


def test_export_and_script_on_wrn_student() -> None:
    model = create_model("wrn_40_2_bs811k").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    exported = torch.export.export(model, (x,))
    assert torch.allclose(exported.module()(x), ref, atol=1e-5)
    scripted = torch.jit.script(model)
    assert torch.allclose(scripted(x), ref, atol=1e-5)


def test_timm_style_arguments() -> None:
    import blockswap_zoo as bz

    model = bz.create_model("wrn_16_1")
    x = torch.randn(1, 3, 32, 32)
    last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [f.shape[1] for f in last_two] == [32, 64]  # an int n: the last n stage outputs
    with pytest.raises(ValueError, match="out of range: this network has 3 stage outputs"):
        model.forward_intermediates(x, indices=[5])
    model.reset_classifier(3, "avg")
    assert model(x).shape == (1, 3)
    with pytest.raises(ValueError, match="average only"):
        model.reset_classifier(3, "max")
    assert bz.list_pretrained(["wrn_40_2.*", "nothing*"]) == ["wrn_40_2.fmnist"]


def test_genotype_counts_refuse_impossible_shapes(tmp_path) -> None:
    from blockswap_zoo.genotype import GenotypeError

    g = Genotype.uniform("wrn_10_1")
    for call in (lambda: g.macs(input_size=0), lambda: g.num_params(-1), lambda: g.num_params(10, 0)):
        with pytest.raises(GenotypeError, match="must be"):
            call()
    with pytest.raises(GenotypeError, match="is a folder"):
        g.save(tmp_path)
