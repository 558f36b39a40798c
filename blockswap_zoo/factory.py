"""Names to built models: ``create_model`` (any name, parsed once by ``sources.py``, or a Genotype, with
published or checkpoint weights when asked, as timm's factory) and ``load_trained`` (a name's trained weights)."""

from __future__ import annotations

import dataclasses
from typing import Any

from .genotype import Genotype
from .models import SwapNet, build_model
from .registry import UnknownModelError, get_arch
from .sources import ModelSource, checkpoint_directory, parse_source, read_training_checkpoint

__all__ = ["create_model", "load_trained"]


def create_model(
    name_or_genotype: str | Genotype,
    pretrained: bool | str = False,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> SwapNet:
    """Build a model by name, Genotype or genotype string, or load a published / saved checkpoint.

    - ``"wrn_40_2_bs811k"``: the arch, randomly initialised (``num_classes`` / ``in_chans``
      default to the arch's); a plain backbone (``"wrn_10_1"``) is every block S;
    - ``"arch.tag"`` with ``pretrained=True``, ``"arch"`` with ``pretrained=True`` (the arch's first
      published tag) or ``pretrained="tag"``: published weights, sha256-verified; a different
      ``num_classes`` replaces only the classifier (fine-tuning). ``"arch.tag"`` without
      ``pretrained`` is the tag's configuration (classes, channels) randomly initialised, as in timm;
    - ``"local-dir:<path>"``: any checkpoint directory; ``"hf-hub:ORG/NAME[@REV]"``: one on the Hub;
      both always load their verified weights (``pretrained`` is not needed);
    - a Genotype, or its JSON / compact text.

    Bare paths are not read (a folder named like an arch never shadows it): use ``local-dir:``.
    """
    from .checkpoint import load_checkpoint_dir

    source = None if isinstance(name_or_genotype, Genotype) else parse_source(name_or_genotype, files=False)
    if source is not None and source.kind in ("checkpoint_dir", "hf_hub"):  # a checkpoint: always its own weights
        try:
            directory = checkpoint_directory(source)
        except (ValueError, TypeError) as e:  # huggingface_hub's repo-id validation
            raise UnknownModelError(str(e)) from None
        return load_checkpoint_dir(directory, num_classes=num_classes, in_chans=in_chans, **kwargs)
    if source is None or source.kind != "arch":  # a Genotype, genotype text or a plain backbone
        if pretrained:
            raise UnknownModelError("pretrained=True needs a registered model name, not a bare genotype")
        genotype = name_or_genotype if source is None else source.genotype
        assert isinstance(genotype, Genotype)
        return build_model(genotype, num_classes=num_classes, in_chans=3 if in_chans is None else in_chans, **kwargs)
    arch = get_arch(source.text)
    if pretrained:
        name = source.text
        if isinstance(pretrained, str):  # pretrained="tag" names the weights
            if source.tag is not None and source.tag != pretrained:
                raise UnknownModelError(
                    f"{name!r} already names tag {source.tag!r}; pretrained={pretrained!r} contradicts it"
                )
            name = f"{arch.name}.{pretrained}"
        return _create_pretrained(name, num_classes, in_chans, **kwargs)
    if source.tag is not None:  # as timm: the tag's configuration, randomly initialised
        from .pretrained import get_weights

        w = get_weights(source.text)
        num_classes = w.num_classes if num_classes is None else num_classes
        in_chans = w.in_chans if in_chans is None else in_chans
    return build_model(
        arch.genotype,
        num_classes=arch.num_classes if num_classes is None else num_classes,
        in_chans=arch.in_chans if in_chans is None else in_chans,
        **kwargs,
    )


def _create_pretrained(name: str, num_classes: int | None, in_chans: int | None, **kwargs: Any) -> SwapNet:
    """A published record's model with its sha256-verified weights (a new classifier for other classes)."""
    from .checkpoint import load_model_weights, load_verified_state_dict
    from .pretrained import get_weights, resolve_weights_file

    w = get_weights(name)
    if in_chans is not None and in_chans != w.in_chans:
        raise UnknownModelError(
            f"{w.name} was trained on {w.in_chans}-channel input; in_chans={in_chans} cannot load it"
        )
    genotype = Genotype.from_string(w.genotype)
    if genotype != get_arch(w.arch).genotype:
        raise UnknownModelError(f"record {w.name} does not describe arch {w.arch}'s genotype")
    classes = w.num_classes if num_classes is None else num_classes  # 0: features only, as timm
    model = build_model(genotype, num_classes=classes, in_chans=w.in_chans, **kwargs)
    path = resolve_weights_file(w)
    load_model_weights(model, load_verified_state_dict(path, w.sha256, w.size), w.name)
    model.pretrained_cfg = dataclasses.asdict(w)  # type: ignore[assignment]  # a dict, as timm's and checkpoint.py's
    return model


def load_trained(source: ModelSource, num_classes: int | None = None) -> SwapNet:
    """The source's trained model, weights verified; ``num_classes`` other than its own gives a fresh
    classifier (fine-tuning). A name without weights (an arch, a genotype) is refused with the published
    tags it could mean."""
    if not source.names_weights:
        from .pretrained import list_pretrained

        tags = list_pretrained(f"{source.arch}.*") if source.arch else []
        hint = f" (published: {', '.join(tags)})" if tags else ""
        raise FileNotFoundError(
            f"{source.text!r} names an architecture, not trained weights; pass a run directory, a checkpoint, "
            f"local-dir:PATH, hf-hub:ORG/NAME or a published arch.tag{hint}"
        )
    if source.kind == "training_checkpoint":
        model = _load_training_checkpoint(source)
    elif source.kind == "arch":
        return create_model(source.text, pretrained=True, num_classes=num_classes)
    else:
        from .checkpoint import load_checkpoint_dir

        model = load_checkpoint_dir(checkpoint_directory(source))
    if num_classes is not None and model.num_classes != num_classes:
        model.reset_classifier(num_classes)
    return model


def _load_training_checkpoint(source: ModelSource) -> SwapNet:
    """A training run's ``checkpoint.pt`` (weights_only) as the model its model_config describes."""
    state = read_training_checkpoint(source)
    cfg = state["model_config"]
    model = build_model(Genotype.from_dict(cfg["genotype"]), num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as e:
        raise ValueError(f"{source.path}: its weights do not fit the model its model_config describes: {e}") from None
    return model
