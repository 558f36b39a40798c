"""Detection: detectors from ResNet genotypes (every registered backbone), FPN against feature_info, train and
eval modes, the Fashion-MNIST canvas set, COCO-format loading and COCOeval, the detection Fisher proxy and
search, training with resume, recipes, the CLI. Tiny canvases and detectors: seconds each."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

pytest.importorskip("pycocotools")

from typer.testing import CliRunner  # noqa: E402

from blockswap_zoo.checkpoint import save_checkpoint_dir  # noqa: E402
from blockswap_zoo.cli import app  # noqa: E402
from blockswap_zoo.detection import (  # noqa: E402
    DETECTION_BACKBONES,
    DetectorConfig,
    DetectorError,
    backbone_params,
    create_detector,
    list_detectors,
    parse_detector_name,
)
from blockswap_zoo.detection.coco import CocoDetectionData, DetectionDataError, coco_evaluate, collate  # noqa: E402
from blockswap_zoo.detection.config import (  # noqa: E402
    DetectionTrainConfig,
    list_detection_recipes,
    load_detection_recipe,
)
from blockswap_zoo.detection.proxy import detector_fisher_per_block, score_detector  # noqa: E402
from blockswap_zoo.detection.search import detection_batch, search_detector  # noqa: E402
from blockswap_zoo.detection.synthetic import SyntheticSpec, make_detection_set  # noqa: E402
from blockswap_zoo.detection.train import load_detector, train_detector  # noqa: E402
from blockswap_zoo.genotype import Genotype  # noqa: E402
from blockswap_zoo.models import build_model  # noqa: E402
from blockswap_zoo.recipe import RecipeError  # noqa: E402

runner = CliRunner()


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


TINY = {"fpn_channels": 16, "head_channels": 32, "min_size": 64, "max_size": 64, "anchor_sizes": (8, 16, 32, 64, 128)}
SMALL_R18 = "resnet18:v1:" + ";".join(["G(N)"] * 8)  # 1.45M backbone params: quick to build


def tiny(name: str = f"maskrcnn_{SMALL_R18}", num_classes: int = 11) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_detector(name, num_classes=num_classes, **TINY)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def detset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 train and 4 val canvases of 64 px with 1-3 Fashion-MNIST items at scale 1-1.2."""
    root = tmp_path_factory.mktemp("detset")
    spec = SyntheticSpec(train_images=12, val_images=4, canvas=64, max_items=3, min_scale=1.0, max_scale=1.2, seed=3)
    make_detection_set(root, spec)
    return root


def _data(root: Path, split: str = "val", **kw: bool) -> CocoDetectionData:
    return CocoDetectionData(root / split, root / "annotations" / f"instances_{split}.json", **kw)


# ----------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", list_detectors())
def test_every_registered_detector_builds_with_its_backbone(name: str) -> None:
    kind, genotype = parse_detector_name(name)
    det = create_detector(name, num_classes=5, **TINY)  # type: ignore[arg-type]
    body = det.backbone.body
    assert body.genotype == genotype and body.num_classes == 0
    assert sum(p.numel() for p in body.parameters()) == backbone_params(genotype)
    assert det.roi_heads.has_mask() == (kind == "maskrcnn")
    inner = [blk[0].in_channels for blk in det.backbone.fpn.inner_blocks]
    assert inner == [info["num_chs"] for info in body.feature_info]


def test_table4_baseline_is_resnet34_all_gn_of_about_3m_params() -> None:
    g = DETECTION_BACKBONES["resnet34_gn3m"][0]
    assert g == Genotype.uniform("resnet34", "G(N)")
    assert g.num_params(1000) == 3_132_520  # Table 3's "ResNet-34, all G(N)": 3.1M with the ImageNet classifier
    assert backbone_params(g) == 2_619_520  # inside the detector: no classifier
    assert "maskrcnn_resnet34_gn3m" in list_detectors() and "fasterrcnn_resnet34_gn3m" in list_detectors()


def test_fpn_levels_have_the_fpn_width_and_the_stage_strides() -> None:
    det = tiny()
    feats = det.backbone(torch.randn(1, 3, 64, 64))
    assert list(feats) == ["0", "1", "2", "3", "pool"]
    reductions = [info["reduction"] for info in det.backbone.body.feature_info]
    for key, red in zip(["0", "1", "2", "3"], reductions, strict=True):
        assert feats[key].shape == (1, TINY["fpn_channels"], 64 // red, 64 // red)


def _targets(n: int, masks: bool = True) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        t = {"boxes": torch.tensor([[4.0 + i, 6.0, 30.0, 40.0]]), "labels": torch.tensor([1 + i])}
        if masks:
            m = torch.zeros(1, 64, 64, dtype=torch.uint8)
            m[0, 6:40, 4 + i : 30] = 1
            t["masks"] = m
        out.append(t)
    return out


@pytest.mark.parametrize("kind", ["maskrcnn", "fasterrcnn"])
def test_train_mode_losses_backpropagate_and_eval_mode_detects(kind: str) -> None:
    det = tiny(f"{kind}_{SMALL_R18}")
    images = [torch.rand(3, 64, 64) for _ in range(2)]
    det.train()
    losses = det(images, _targets(2, masks=kind == "maskrcnn"))
    assert ("loss_mask" in losses) == (kind == "maskrcnn") and {"loss_classifier", "loss_objectness"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    first_conv = det.backbone.body.conv1.weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0  # the loss reaches the stem
    det.eval()
    with torch.no_grad():
        out = det(images)
    assert len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])
    assert ("masks" in out[0]) == (kind == "maskrcnn")


def test_any_resnet_genotype_makes_a_detector_and_wrn_is_refused() -> None:
    g = Genotype.parse(SMALL_R18)
    det = create_detector(g, num_classes=3, kind="fasterrcnn", **TINY)  # type: ignore[arg-type]
    assert not det.roi_heads.has_mask() and det.backbone.body.genotype == g
    with pytest.raises(DetectorError, match="ResNet genotype"):
        create_detector("maskrcnn_wrn_40_2", num_classes=3)
    with pytest.raises(DetectorError, match="ResNet genotype"):
        create_detector(Genotype.uniform("wrn_16_1"), num_classes=3)
    with pytest.raises(DetectorError, match="neither a detector name.*maskrcnn, fasterrcnn"):
        create_detector("retinanet_resnet34", num_classes=3)
    with pytest.raises(DetectorError, match="not a model name"):
        create_detector("maskrcnn_resnet99", num_classes=3)
    with pytest.raises(DetectorError, match="contradicts"):
        create_detector("maskrcnn_resnet18", num_classes=3, kind="fasterrcnn")
    with pytest.raises(DetectorError, match="background"):
        create_detector("maskrcnn_resnet18", num_classes=1)


def test_backbone_weights_load_strictly_from_a_classification_checkpoint(tmp_path: Path) -> None:
    g = Genotype.parse(SMALL_R18)
    torch.manual_seed(1)
    clf = build_model(g, num_classes=10)
    save_checkpoint_dir(clf, tmp_path / "clf", {"dataset": "fashion_mnist"})
    det = create_detector(g, num_classes=3, backbone_weights=f"local-dir:{tmp_path / 'clf'}", **TINY)  # type: ignore[arg-type]
    body = det.backbone.body.state_dict()
    assert all(torch.equal(v, body[k]) for k, v in clf.state_dict().items() if not k.startswith("fc."))
    assert not any(k.startswith("fc.") for k in body)
    other = "resnet18:v1:" + ";".join(["G(4)"] * 8)
    with pytest.raises(DetectorError, match="not the detector's backbone"):
        create_detector(other, num_classes=3, backbone_weights=f"local-dir:{tmp_path / 'clf'}")


def test_light_modules_do_not_import_torchvision() -> None:
    code = (
        "import sys, blockswap_zoo, blockswap_zoo.models, blockswap_zoo.registry, blockswap_zoo.checkpoint, "
        "blockswap_zoo.factory; print('torchvision' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------- data
def test_canvas_set_is_seeded_and_masks_make_the_boxes(detset: Path, tmp_path: Path) -> None:
    spec = SyntheticSpec(train_images=12, val_images=4, canvas=64, max_items=3, min_scale=1.0, max_scale=1.2, seed=3)
    make_detection_set(tmp_path / "again", spec)
    for split in ("train", "val"):
        a = (detset / "annotations" / f"instances_{split}.json").read_bytes()
        assert a == (tmp_path / "again" / "annotations" / f"instances_{split}.json").read_bytes()
    make_detection_set(tmp_path / "other", SyntheticSpec(12, 4, 64, 3, 1.0, 1.2, seed=4))
    assert (tmp_path / "other" / "annotations" / "instances_train.json").read_bytes() != (
        detset / "annotations" / "instances_train.json"
    ).read_bytes()
    data = _data(detset, "train")
    assert data.num_classes == 11 and data.category_names[0] == "T-shirt/top"
    seen = 0
    for i in range(len(data)):
        image, t = data[i]
        assert image.shape == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
        for box, mask, label in zip(t["boxes"], t["masks"], t["labels"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
            assert 1 <= int(label) <= 10
            assert image[0][mask.bool()].min() > 0  # the mask is the item's own bright pixels
            seen += 1
    assert seen >= len(data)


def test_flip_mirrors_image_boxes_and_masks(detset: Path) -> None:
    plain, flipped = _data(detset, "train"), _data(detset, "train", flip=True)
    torch.manual_seed(0)
    found = False
    for _ in range(20):
        img, t = plain[0]
        fimg, ft = flipped[0]
        if not torch.equal(img, fimg):
            found = True
            assert torch.equal(fimg, img.flip(-1)) and torch.equal(ft["masks"], t["masks"].flip(-1))
            assert torch.equal(ft["boxes"][:, [0, 2]], 64 - t["boxes"][:, [2, 0]])
    assert found


def test_missing_annotation_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DetectionDataError, match="instances_nope.json does not exist.*make-detection-set"):
        CocoDetectionData(tmp_path, tmp_path / "instances_nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": 3}')
    with pytest.raises(DetectionDataError, match="not a COCO instances file"):
        CocoDetectionData(tmp_path, bad)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hostname", 7])
def test_an_image_file_name_outside_the_image_folder_is_refused(detset: Path, tmp_path: Path, name: object) -> None:
    ann = json.loads((detset / "annotations" / "instances_val.json").read_text())
    ann["images"][0]["file_name"] = name
    bad = tmp_path / "instances_val.json"
    bad.write_text(json.dumps(ann))
    data = CocoDetectionData(detset / "val", bad)
    index = data.ids.index(ann["images"][0]["id"])
    with pytest.raises(DetectionDataError, match="not a relative path inside the image folder"):
        data[index]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][0].update(category_id=999), "category_id 999 is not among"),
        (lambda d: d["annotations"][0].pop("bbox"), "bbox must be"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "bbox must be"),
        (lambda d: d["annotations"][0].update(segmentation=5), "segmentation must be polygons"),
        (lambda d: d["annotations"][0].update(segmentation=[]), "segmentation is an empty list"),
        (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4, 5]]), "even number"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [200000, 200000], "counts": "abc"}), "RLE size"),
        (lambda d: d["annotations"][0].update(segmentation={"size": [64, 64], "counts": [-5, 4101]}), "non-negative"),
        (lambda d: d["images"][0].update(width=100000), "width and height must be"),
        (lambda d: d["images"][0].update(height="64"), "width and height must be"),
        (lambda d: d["annotations"][0].update(image_id=-7), "image_id is not among"),
    ],
)
def test_annotations_training_cannot_use_are_refused_up_front(detset: Path, tmp_path: Path, change, message) -> None:  # noqa: ANN001
    ann = json.loads((detset / "annotations" / "instances_val.json").read_text())
    change(ann)
    bad = tmp_path / "instances_val.json"
    bad.write_text(json.dumps(ann))
    with pytest.raises(DetectionDataError, match=message):
        CocoDetectionData(detset / "val", bad)


def test_an_image_that_disagrees_with_its_recorded_size_is_refused(detset: Path, tmp_path: Path) -> None:
    ann = json.loads((detset / "annotations" / "instances_val.json").read_text())
    ann["images"][0]["width"] += 1
    bad = tmp_path / "instances_val.json"
    bad.write_text(json.dumps(ann))
    data = CocoDetectionData(detset / "val", bad, masks=False)  # boxes only: the masks' RLE would be refused first
    with pytest.raises(DetectionDataError, match="but .* says 65x64"):
        data[data.ids.index(ann["images"][0]["id"])]


def test_pycocotools_missing_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from blockswap_zoo.detection.coco import require_pycocotools

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"blockswap-zoo\[detection\]"):
        require_pycocotools()


class _Oracle(torch.nn.Module):
    """Returns a dataset's ground truth (boxes shifted by ``shift`` px) as detections."""

    def __init__(self, data: CocoDetectionData, shift: float = 0.0, masks: bool = True) -> None:
        super().__init__()
        self.data, self.shift = data, shift
        self.roi_heads = type("Heads", (), {"has_mask": lambda _self: masks})()
        self.calls = 0

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for _ in images:
            _, t = self.data[self.calls]
            self.calls += 1
            n = len(t["labels"])
            out.append({"boxes": t["boxes"] + self.shift, "labels": t["labels"], "scores": torch.ones(n),
                        "masks": t["masks"][:, None].float()})  # fmt: skip
        return out


def test_cocoeval_scores_ground_truth_100_and_shifted_boxes_less(detset: Path) -> None:
    data = _data(detset)
    perfect = coco_evaluate(_Oracle(data), data, batch_size=2)
    assert perfect["bbox"]["AP"] == pytest.approx(100.0) and perfect["segm"]["AP"] == pytest.approx(100.0)
    assert set(perfect["bbox"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert perfect["images"] == 4 and perfect["detections"] == sum(len(data[i][1]["labels"]) for i in range(4))
    shifted = coco_evaluate(_Oracle(data, shift=3.0, masks=False), data, batch_size=2)
    assert 0 < shifted["bbox"]["AP"] < 90 and shifted["bbox"]["AP50"] == pytest.approx(100.0) and "segm" not in shifted


def test_untrained_detector_evaluates_near_zero(detset: Path) -> None:
    data = _data(detset)
    r = coco_evaluate(tiny(), data, batch_size=2)
    assert r["bbox"]["AP"] < 5 and r["segm"]["AP"] < 5


# ----------------------------------------------------------------------------------------------- proxy and search
def test_detection_fisher_matches_the_definition_and_leaves_the_model_alone(detset: Path) -> None:
    data = _data(detset, "train")
    images, targets = map(list, collate([data[i] for i in range(3)]))
    det = tiny()
    det.eval()
    flags = [p.requires_grad for p in det.parameters()]
    per_block = detector_fisher_per_block(det, images, targets, seed=5)
    assert len(per_block) == 8 and all(v >= 0 for v in per_block) and sum(per_block) > 0
    assert [p.requires_grad for p in det.parameters()] == flags and not det.training
    assert detector_fisher_per_block(det, images, targets, seed=5) == per_block  # seeded sampling: reproducible

    acts: list[torch.Tensor] = []  # the definition, by hand: a and dL/da at each probe, loss = summed losses
    hooks = [b.probe.register_forward_hook(lambda _m, _i, o: acts.append(o)) for b in det.backbone.body.swap_blocks()]
    det.train()
    with torch.random.fork_rng():
        torch.manual_seed(5)
        loss = sum(det([im.clone().requires_grad_(True) for im in images], targets).values())
    grads = torch.autograd.grad(loss, acts)
    for h in hooks:
        h.remove()
    manual = [
        float(0.5 * (a.detach() * g).sum(dim=(2, 3)).pow(2).mean(0).sum()) for a, g in zip(acts, grads, strict=True)
    ]
    assert per_block == pytest.approx(manual, rel=1e-4)


def test_detection_search_picks_the_highest_fisher_potential_within_budget(detset: Path, tmp_path: Path) -> None:
    data = _data(detset, "train")
    template = DetectorConfig("maskrcnn", Genotype.parse(SMALL_R18), data.num_classes, **TINY)  # type: ignore[arg-type]
    r = search_detector(template, data, "1.2m", samples=3, batch_size=2, seed=1, out_dir=tmp_path)
    scores = [c.score for c in r.candidates]
    assert r.score == max(scores) and len(set(scores)) == 3
    assert all(abs(c.params - 1_200_000) <= 30_000 for c in r.candidates)
    assert Genotype.load(tmp_path / "winner.json") == r.winner
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 3
    best = r.candidates[scores.index(max(scores))]  # the winner's score again, from its genotype and seed alone
    assert score_detector(replace(template, genotype=r.winner), *detection_batch(data, 2, 1), best.seed) == r.score
    before = (tmp_path / "summary.json").read_text()
    with pytest.raises(ValueError, match="pass --force to replace it"):  # a finished report is kept
        search_detector(template, data, "1.2m", samples=1, batch_size=2, seed=2, out_dir=tmp_path)
    assert (tmp_path / "summary.json").read_text() == before
    search_detector(template, data, "1.2m", samples=1, batch_size=2, seed=2, out_dir=tmp_path, force=True)
    assert len((tmp_path / "candidates.jsonl").read_text().splitlines()) == 1
    classification = tmp_path / "classification"  # a classification search's report is never replaced
    classification.mkdir()
    (classification / "settings.json").write_text("{}")
    (classification / "candidates.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"holds something other than a detection search report \(settings.json\)"):
        search_detector(template, data, "1.2m", samples=1, batch_size=2, seed=2, out_dir=classification, force=True)
    assert (classification / "settings.json").read_text() == "{}"


# ----------------------------------------------------------------------------------------------- training
def _config(root: Path, **kw: object) -> DetectionTrainConfig:
    base = dict(detector=f"maskrcnn_{SMALL_R18}", data_root=str(root), train_images="train",
                train_annotations="annotations/instances_train.json", val_images="val",
                val_annotations="annotations/instances_val.json", epochs=2, batch_size=4, lr=0.01, lr_steps=(1,),
                warmup_iters=2, num_workers=0, device="cpu", **TINY)  # fmt: skip
    return DetectionTrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_train_resume_and_load(detset: Path, tmp_path: Path) -> None:
    full = train_detector(_config(detset), tmp_path / "full")
    assert full.metrics["steps"] == 6 and full.metrics["epochs"] == 2 and "segm" in full.metrics
    assert (tmp_path / "full" / "detector.json").is_file()
    # one epoch, then resume for the second: the same weights as the uninterrupted run
    train_detector(_config(detset, max_steps=3), tmp_path / "split")
    with pytest.raises(Exception, match="max_steps"):
        train_detector(_config(detset), tmp_path / "split", resume=True)
    (tmp_path / "split2").mkdir()
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    state["config"]["max_steps"] = None
    torch.save(state, tmp_path / "split2" / "checkpoint.pt")
    resumed = train_detector(_config(detset), tmp_path / "split2", resume=True)
    a, b = full.model.state_dict(), resumed.model.state_dict()  # type: ignore[union-attr]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    model, doc = load_detector(tmp_path / "full")
    assert doc["categories"][0]["name"] == "T-shirt/top" and not model.training
    assert all(torch.equal(v, a[k]) for k, v in model.state_dict().items())
    blob = tmp_path / "full" / "detector.safetensors"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_detector(tmp_path / "full")


def test_shipped_table4_recipe_and_bad_recipes(tmp_path: Path) -> None:
    assert [p.stem for p in list_detection_recipes()] == ["maskrcnn_resnet34_gn3m.coco"]
    r = load_detection_recipe("maskrcnn_resnet34_gn3m.coco")
    assert r.train.batch_size == 16 and r.train.lr == 0.02 and r.train.lr_steps == (16, 22) and r.train.epochs == 26
    assert parse_detector_name(r.train.detector)[1] == Genotype.uniform("resnet34", "G(N)")
    assert r.paper["box_AP"] == 22.3
    bad = tmp_path / "bad.yaml"
    for text, match in [
        ("name: x\ndescription: y\ntrain: {epoch: 3}\n", "unknown key.*'epoch'"),
        ("name: x\ndescription: y\ntrain: {lr_steps: [1, a]}\n", r"train.lr_steps\[1\]: expected int"),
        ("name: x\ndescription: y\ntrain: {epochs: 0}\n", "epochs must be >= 1"),
        ("name: x\ntrain: {}\n", "description: required"),
        ("name: x\ndescription: y\ntrain: {}\nmodel: !!python/object:os.system ls\n", "not valid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(RecipeError, match=match):
            load_detection_recipe(bad)
    with pytest.raises(RecipeError, match="no detection recipe"):
        load_detection_recipe("nope")


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_make_set_train_evaluate_and_bad_input(tmp_path: Path) -> None:
    res = runner.invoke(app, ["make-detection-set", "--out", str(tmp_path / "d"), "--train-images", "4",
                              "--val-images", "2", "--canvas", "64", "--max-scale", "1.2"])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["make-detection-set", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "--force" in _flat(res.output)
    opts = ["--data-root", str(tmp_path / "d"), "--train-images", "train", "--train-annotations",
            "annotations/instances_train.json", "--val-images", "val", "--val-annotations",
            "annotations/instances_val.json", "--fpn-channels", "16", "--head-channels", "32", "--min-size", "64",
            "--max-size", "64", "--anchor-sizes", "8,16,32,64,128", "--num-workers", "0", "--device", "cpu"]  # fmt: skip
    res = runner.invoke(app, ["train-detector", "--detector", f"fasterrcnn_{SMALL_R18}", *opts, "--epochs", "1",
                              "--batch-size", "2", "--out", str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout[res.stdout.index("{") :])
    assert metrics["steps"] == 2 and "bbox" in metrics and "segm" not in metrics
    res = runner.invoke(app, ["evaluate-detector", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["bbox"] == metrics["bbox"]
    res = runner.invoke(app, ["train-detector", "--detector", "maskrcnn_wrn_40_2", *opts, "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "ResNet genotype" in _flat(res.output)
    res = runner.invoke(app, ["train-detector", *opts[:4], "--train-annotations", "missing.json", "--out",
                              str(tmp_path / "y")])  # fmt: skip
    assert res.exit_code == 2 and "missing.json does not exist" in _flat(res.output)
    res = runner.invoke(app, ["evaluate-detector", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "not a detector training run" in _flat(res.output)
    res = runner.invoke(app, ["list-detectors", "maskrcnn_resnet34_gn*", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["backbone_params"] == 2_619_520


def test_train_detector_under_torchrun_with_two_cpu_processes(detset: Path, tmp_path: Path) -> None:
    """DDP over gloo: both ranks train, rank 0 alone writes the run and prints its metrics."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch\ntorch.set_num_threads(1)\nfrom blockswap_zoo.cli import main\n"
        "sys.argv = ['blockswap-zoo'] + sys.argv[1:]\nmain()\n"
    )
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29547",
           str(script), "train-detector", "--detector", f"fasterrcnn_{SMALL_R18}", "--data-root", str(detset),
           "--train-images", "train", "--train-annotations", "annotations/instances_train.json",
           "--val-images", "val", "--val-annotations", "annotations/instances_val.json", "--fpn-channels", "16",
           "--head-channels", "32", "--min-size", "64", "--max-size", "64", "--anchor-sizes", "8,16,32,64,128",
           "--num-workers", "0", "--device", "cpu", "--epochs", "1", "--batch-size", "2",
           "--out", str(tmp_path / "ddp")]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count('"world_size": 2') == 1  # rank 0 alone prints
    metrics = json.loads(p.stdout[p.stdout.index("{") :])
    assert metrics["steps"] == 6 and "bbox" in metrics  # 12 canvases, global batch 2: one per rank per step
    assert (tmp_path / "ddp" / "detector.safetensors").is_file()


def test_a_detection_set_stopped_part_way_leaves_the_old_one_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blockswap_zoo.detection import synthetic

    spec = SyntheticSpec(train_images=6, val_images=2, canvas=64, max_items=2, min_scale=1.0, max_scale=1.2, seed=1)
    make_detection_set(tmp_path, spec)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real_png, made = synthetic._png, []

    def png_then_stop(canvas):  # noqa: ANN001, ANN202 - stopped after 3 images of the new set
        made.append(1)
        if len(made) > 3:
            raise KeyboardInterrupt
        return real_png(canvas)

    monkeypatch.setattr(synthetic, "_png", png_then_stop)
    with pytest.raises(KeyboardInterrupt):
        make_detection_set(tmp_path, replace(spec, seed=2))
    after = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before and sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "train", "val"]
    monkeypatch.setattr(synthetic, "_png", real_png)
    make_detection_set(tmp_path, replace(spec, seed=2))  # finished, it replaces the set whole
    assert json.loads((tmp_path / "annotations" / "instances_train.json").read_text())["info"]["spec"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations", "train", "val"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--min-size", "0"], "min_size must be a whole number"),
        (["--fpn-channels", "0"], "fpn_channels must be a whole number"),
        (["--seed", "-1"], "seed must be a whole number"),
    ],
)
def test_search_detector_options_are_checked_up_front(detset: Path, tmp_path: Path, extra: list, message: str) -> None:
    from typer.testing import CliRunner

    from blockswap_zoo.cli import app

    args = ["search-detector", "--images", str(detset / "train"), "--annotations",
            str(detset / "annotations" / "instances_train.json"), "--samples", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    r = CliRunner().invoke(app, args + extra)
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"lr": float("nan")}, "lr must be > 0"), ({"threads": 0}, "threads must be >= 1"),
     ({"num_classes": "ten"}, "num_classes must be a whole number"), ({"num_classes": 10**9}, "num_classes must be")],
)  # fmt: skip
def test_detection_settings_that_cannot_train_are_refused(detset: Path, changes: dict, message: str) -> None:
    if "num_classes" in changes:
        with pytest.raises(ValueError, match=message):
            DetectorConfig("maskrcnn", Genotype.parse(SMALL_R18), **changes, **TINY)  # type: ignore[arg-type]
        return
    with pytest.raises(ValueError, match=message):
        _config(detset, **changes)
