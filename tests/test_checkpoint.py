"""Checkpoint directories, verified loading, offline mode and the Hugging Face cache path."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from blockswap_zoo import create_model
from blockswap_zoo.checkpoint import (
    WeightsError,
    load_checkpoint_dir,
    load_verified_state_dict,
    save_checkpoint_dir,
    sha256_file,
)
from blockswap_zoo.hf import OfflineError
from blockswap_zoo.pretrained import Weights, resolve_weights_file

GENOTYPE = "wrn_10_1:v1:BG(2,M/2);G(4);S"


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model(GENOTYPE, num_classes=10, in_chans=1)
    with torch.no_grad():  # non-trivial BN buffers: they must travel too
        model(torch.randn(8, 1, 28, 28) * 3)
    out = tmp_path / "ckpt"
    save_checkpoint_dir(
        model.eval(), out, {"dataset": "fashion_mnist", "input_size": [1, 28, 28], "metrics": {"top1": 50.0}}
    )
    return out


def test_checkpoint_dir_round_trip(checkpoint: Path) -> None:
    cfg = json.loads((checkpoint / "config.json").read_text())
    assert cfg["weights_sha256"] == sha256_file(checkpoint / "model.safetensors")
    assert cfg["params"] == sum(p.numel() for p in load_checkpoint_dir(checkpoint).parameters())
    a = load_checkpoint_dir(checkpoint).eval()
    b = create_model(f"local-dir:{checkpoint}").eval()
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.stages[0][0].bn1.running_var, b.stages[0][0].bn1.running_var)


def test_refuses_to_overwrite(checkpoint: Path) -> None:
    with pytest.raises(FileExistsError, match="--force"):
        save_checkpoint_dir(load_checkpoint_dir(checkpoint), checkpoint, {})


def test_sha256_mismatch_is_refused(checkpoint: Path) -> None:
    path = checkpoint / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_checkpoint_dir(checkpoint)


def test_truncated_file_is_refused(checkpoint: Path) -> None:
    path = checkpoint / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        load_checkpoint_dir(checkpoint)


def test_non_safetensors_is_refused_without_unpickling(tmp_path: Path) -> None:
    class Boom:
        def __reduce__(self):  # would run code if anything unpickled it
            return (Path(tmp_path / "pwned").write_text, ("x",))

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"fc.weight": Boom()}))
    with pytest.raises(WeightsError, match="not a valid safetensors file"):
        load_verified_state_dict(bad, sha256=sha256_file(bad))  # the right hash: parsing still refuses it
    assert not (tmp_path / "pwned").exists()


def test_num_classes_replaces_only_the_classifier(checkpoint: Path) -> None:
    base = load_checkpoint_dir(checkpoint)
    tuned = load_checkpoint_dir(checkpoint, num_classes=3)
    assert tuned.get_classifier().out_features == 3
    for k, v in base.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, tuned.state_dict()[k]), k


def _record(tmp_path: Path, checkpoint: Path) -> Weights:
    cfg = json.loads((checkpoint / "config.json").read_text())
    return Weights(
        name="wrn_10_1.test", file="weights/wrn_10_1.test/model.safetensors", sha256=cfg["weights_sha256"],
        size=cfg["weights_size"], dataset="fashion_mnist", num_classes=10, in_chans=1, input_size=(1, 28, 28),
        mean=(0.286,), std=(0.353,), label_names=tuple(str(i) for i in range(10)), metrics={"top1": 50.0},
        params=cfg["params"], macs=cfg["macs"], genotype=GENOTYPE, teacher=None, recipe="x.yaml", license="mit",
        hf_repo="org/x", eval_transform="normalise", training="test", eval_command="none",
    )  # fmt: skip


def test_offline_mode_names_the_expected_path(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKSWAP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = _record(tmp_path, checkpoint)
    with pytest.raises(OfflineError, match=str(tmp_path / "cache" / "wrn_10_1.test" / "model.safetensors")):
        resolve_weights_file(w)


def test_download_from_file_url_is_verified(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    served = tmp_path / "served" / "weights" / "wrn_10_1.test"
    served.mkdir(parents=True)
    (served / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    monkeypatch.setenv("BLOCKSWAP_ZOO_BASE_URL", (tmp_path / "served").as_uri())
    monkeypatch.setenv("BLOCKSWAP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    w = _record(tmp_path, checkpoint)
    path = resolve_weights_file(w)
    assert path == tmp_path / "cache" / "wrn_10_1.test" / "model.safetensors" and path.is_file()
    # a tampered download is deleted and refused
    path.unlink()
    (served / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(WeightsError):
        resolve_weights_file(w)
    assert not path.exists()


def test_failed_download_is_a_clear_error_and_leaves_nothing(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    monkeypatch.setenv("BLOCKSWAP_ZOO_BASE_URL", (tmp_path / "nowhere").as_uri())  # as unreachable as no network
    monkeypatch.setenv("BLOCKSWAP_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    w = _record(tmp_path, checkpoint)
    with pytest.raises(OfflineError, match=r"could not download weights wrn_10_1\.test .*HF_HUB_OFFLINE=1"):
        resolve_weights_file(w)
    assert not (tmp_path / "cache" / "wrn_10_1.test").exists()


def test_hf_hub_cache_offline(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    """A Hub cache laid out on disk as huggingface_hub writes it, read with HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hf"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someorg--tiny-student"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("model.safetensors", "config.json"):
        (snap / f).write_bytes((checkpoint / f).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    from blockswap_zoo.hf import pull_hf_hub

    assert pull_hf_hub("someorg/tiny-student", cache_dir=cache) == snap
    model = load_checkpoint_dir(pull_hf_hub("someorg/tiny-student", "main", cache_dir=cache))
    x = torch.randn(1, 1, 28, 28)
    assert torch.equal(model.eval()(x), load_checkpoint_dir(checkpoint).eval()(x))
    with pytest.raises(OfflineError, match="models--someorg--missing"):
        pull_hf_hub("someorg/missing", cache_dir=cache)


def test_no_unverified_path_and_config_values_are_checked(checkpoint: Path) -> None:
    cfg = json.loads((checkpoint / "config.json").read_text())
    for edit, message in [
        ({"weights_sha256": None}, "no valid sha256 recorded"),
        ({"weights_sha256": "abc"}, "no valid sha256 recorded"),
        ({"num_classes": "10"}, "num_classes .* must be integers"),
        ({"input_size": [3, 28]}, "input_size must be"),
        ({"input_size": [3, 28, 28]}, r"input_size must be \[in_chans"),
    ]:
        (checkpoint / "config.json").write_text(json.dumps({**cfg, **edit}))
        with pytest.raises(WeightsError, match=message):
            load_checkpoint_dir(checkpoint)
    (checkpoint / "config.json").write_text(json.dumps({**cfg, "weights_sha256": cfg["weights_sha256"].upper()}))
    assert load_checkpoint_dir(checkpoint).num_classes == 10  # a sha256 is a sha256 in either case
    assert isinstance(load_checkpoint_dir(checkpoint, num_classes=0).fc, torch.nn.Identity)  # features only


def test_publish_checks_the_checkpoint_and_uploads_only_its_files(checkpoint: Path, monkeypatch) -> None:
    import huggingface_hub

    from blockswap_zoo.hf import push_to_hf_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None) -> None:  # noqa: ANN001
            pass

        def create_repo(self, *a, **k) -> None:  # noqa: ANN002, ANN003
            pass

        def upload_folder(self, **kwargs):  # noqa: ANN003, ANN201
            calls.update(kwargs)
            return type("Commit", (), {"oid": "abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    (checkpoint / ".model.safetensors.tmp").write_bytes(b"junk")
    assert push_to_hf_hub(checkpoint, "me/x") == "abc"
    assert "model.safetensors" in calls["allow_patterns"] and ".model.safetensors.tmp" not in calls["allow_patterns"]
    (checkpoint / "model.safetensors").write_bytes(b"corrupt")
    calls.clear()
    with pytest.raises(WeightsError):
        push_to_hf_hub(checkpoint, "me/x")
    assert not calls  # nothing uploaded
