"""Zero-cost proxies: score a freshly initialised network from one minibatch, without training it.

``fisher_potential`` is BlockSwap's (ICLR 2020) score and the one the search uses; gradient norm
(the paper's Table 1 baseline), SNIP, synflow and NASWOT are here for ablations. Every proxy
has the signature ``proxy(model, images, labels) -> float`` and higher is better. None of them
changes the model: requires_grad flags, weights and modes are restored afterwards. These are the
definitions in plain PyTorch, the ground truth of tests and benchmarks; the search's fast CPU path
(``cpu.layers``, ``scoring``) plugs its kernel in through ``term`` and runs them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

__all__ = [
    "PROXIES",
    "fisher_blocks_of_loss",
    "fisher_per_block",
    "fisher_potential",
    "fisher_term",
    "get_proxy",
    "get_proxy_name",
    "grad_norm",
    "naswot",
    "snip",
    "synflow",
]

Proxy = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]
FisherTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (activation, its gradient) -> one block's term


@contextlib.contextmanager
def _frozen(model: nn.Module, train: bool) -> Iterator[None]:
    """Parameters without grad and every module in the wanted mode for the duration; each parameter's
    flag and each module's mode restored afterwards."""
    needing_grad = [p for p in model.parameters() if p.requires_grad]
    modes = [(m, m.training) for m in model.modules()]
    for p in needing_grad:
        p.requires_grad_(False)
    model.train(train)
    try:
        yield
    finally:
        for p in needing_grad:
            p.requires_grad_(True)
        for m, mode in modes:
            m.training = mode


def _probes(model: nn.Module) -> list[nn.Module]:
    blocks = model.swap_blocks() if hasattr(model, "swap_blocks") else []  # type: ignore[operator]  # duck-typed
    if not blocks:
        raise TypeError("Fisher potential needs a blockswap-zoo model: its swappable blocks carry a `probe` module")
    return [b.probe for b in blocks]


def fisher_term(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """One block's ``sum_c 0.5 * mean_n (sum_hw a * g)^2`` (bf16/fp16 activations summed in fp32)."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    d = (a.detach().to(dtype) * g.to(dtype)).sum(dim=(2, 3))  # N x C
    return 0.5 * d.pow(2).mean(dim=0).sum()


def fisher_per_block(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    term: FisherTerm = fisher_term,
) -> list[float]:
    """Fisher potential of each swappable block (network order), as defined by BlockSwap.

    For the residual-branch output ``a`` of a block and ``g = dL/da`` (L: mean cross-entropy of
    the batch, BatchNorm in train mode): ``sum_c 0.5 * mean_n (sum_hw a * g)^2`` (``term``). Only the
    gradients at the probes are computed (no weight gradients); no optimiser step is taken.
    """
    return [float(v) for v in _fisher_blocks(model, images, labels, autocast_dtype, term)]


def fisher_potential(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast_dtype: torch.dtype | None = None,
    term: FisherTerm = fisher_term,
) -> float:
    """BlockSwap's Fisher potential of ``model`` on one minibatch: the sum of the per-block values."""
    return float(torch.stack(_fisher_blocks(model, images, labels, autocast_dtype, term)).sum())


def _fisher_blocks(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    term: FisherTerm,
) -> list[torch.Tensor]:
    def loss_of(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = net(x)
        with torch.autocast(x.device.type, enabled=False):  # the loss in fp32, outside any autocast
            return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels)

    return fisher_blocks_of_loss(model, images, loss_of, _probes(model), autocast_dtype, term)


FisherLoss = Callable[[nn.Module, Any], torch.Tensor]  # (model, input that carries the graph) -> scalar loss


def fisher_blocks_of_loss(
    model: nn.Module,
    inputs: torch.Tensor | list[torch.Tensor],
    loss_of: FisherLoss,
    probes: list[nn.Module],
    autocast_dtype: torch.dtype | None = None,
    term: FisherTerm = fisher_term,
) -> list[torch.Tensor]:
    """Fisher potential of each probed block under any loss: BlockSwap's definition with L = ``loss_of(model,
    inputs)`` (cross-entropy for classifiers; a detector's summed losses for the detection search).

    ``model`` is put in train mode with no parameter needing a gradient; ``inputs`` (a tensor or a list of
    image tensors) carry the graph, so only the backward steps between the loss and the probes run.
    """
    acts: list[torch.Tensor] = []
    hooks = [p.register_forward_hook(lambda _m, _i, out: acts.append(out)) for p in probes]
    terms: dict[int, torch.Tensor] = {}

    def reduce_at(k: int) -> Callable[[torch.Tensor], None]:
        # Each block's term is taken as soon as backward reaches its probe, while the gradient is still
        # in cache. The hook holds the list, not the tensor: no reference cycle once the list is cleared.
        def hook(g: torch.Tensor) -> None:
            with record_function("fisher/reduce"):
                terms[k] = term(acts[k], g)

        return hook

    try:
        with _frozen(model, train=True):
            # The input carries the graph (no parameter does); autograd.grad then runs only the
            # backward steps between the loss and the probes: no weight gradients at all.
            if isinstance(inputs, torch.Tensor):
                x: Any = inputs.detach().requires_grad_(True)
                device_type = inputs.device.type
            else:
                x = [t.detach().requires_grad_(True) for t in inputs]
                device_type = inputs[0].device.type
            ctx = (
                torch.autocast(device_type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()
            )
            with record_function("fisher/forward"):
                with ctx:
                    loss = loss_of(model, x)
                loss = loss.float()
            if len(acts) != len(probes):
                raise RuntimeError(f"{len(probes)} probes but {len(acts)} activations: a probe ran more than once")
            for k, a in enumerate(acts):
                a.register_hook(reduce_at(k))
            with record_function("fisher/backward"):
                grads = torch.autograd.grad(loss, acts)
            with record_function("fisher/reduce"):
                for k, (a, g) in enumerate(zip(acts, grads)):
                    if k not in terms:  # where a hook did not run (hooks on autograd.grad's inputs: torch >= 2.0)
                        terms[k] = term(a, g)
            return [terms[k] for k in range(len(acts))]
    finally:
        for h in hooks:
            h.remove()
        acts.clear()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """Convolution and linear weights: the tensors SNIP, synflow and gradient norm score."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _weight_grads(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[list, list]:
    weights = _weights(model)
    with _frozen(model, train=True):
        for w in weights:
            w.requires_grad_(True)
        loss = F.cross_entropy(model(images), labels)
        grads = torch.autograd.grad(loss, weights)
    return weights, list(grads)


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over convolution and linear layers of the L2 norm of dL/dW (the paper's Table 1 baseline)."""
    _, grads = _weight_grads(model, images, labels)
    return float(sum(g.norm() for g in grads))


def snip(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """SNIP saliency (Lee et al. 2019) summed over the network: sum |W * dL/dW|."""
    weights, grads = _weight_grads(model, images, labels)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Synaptic flow (Tanaka et al. 2020): sum W * dR/dW with |W|, BN in eval mode, an all-ones input, float64.

    Data-free: only the input shape of ``images`` is used. Runs on a copy; the model is unchanged.
    """
    net = copy.deepcopy(model).double()
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    weights = _weights(net)
    with _frozen(net, train=False):
        for w in weights:
            w.requires_grad_(True)
        x = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
        r = net(x).sum()
        grads = torch.autograd.grad(r, weights)
    return float(sum((w.detach() * g).sum() for w, g in zip(weights, grads)))


def naswot(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """NASWOT (Mellor et al. 2021): log|det K| of the batch's ReLU activation-pattern similarity kernel."""
    n = images.shape[0]
    kernel = torch.zeros((n, n), dtype=torch.float64, device=images.device)

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        code = (out.detach().flatten(1) > 0).double()
        kernel.add_(code @ code.t()).add_((1 - code) @ (1 - code).t())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with _frozen(model, train=True), torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    return float(torch.linalg.slogdet(kernel)[1])


PROXIES: dict[str, Proxy] = {
    "fisher": fisher_potential,
    "grad_norm": grad_norm,
    "snip": snip,
    "synflow": synflow,
    "naswot": naswot,
}


def get_proxy_name(name: str) -> str:
    """The canonical name of a proxy (case, spaces and ``-`` for ``_`` forgiven); ValueError if unknown."""
    key = name.strip().lower().replace("-", "_")
    if key not in PROXIES:
        raise ValueError(f"unknown proxy {name!r}; choose one of {', '.join(PROXIES)}")
    return key


def get_proxy(name: str) -> Proxy:
    """The proxy called ``name`` (fisher, grad_norm, snip, synflow, naswot)."""
    return PROXIES[get_proxy_name(name)]
