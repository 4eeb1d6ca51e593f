"""DetCo / MoCo v2 building blocks: InfoNCE, queue, momentum, patch pipeline, loss terms."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from pretrain import config as config_module
from pretrain.augment import JigsawPatches, global_view_transform
from pretrain.config import PRESETS, PretrainConfig, machine_workers, preset
from pretrain.detco import DetCo, QueueCopies, ResNetTrunk, info_nce
from pretrain.errors import PretrainInputError
from pretrain.optim import SLICE, SlicedSGD, momentum_update_, pretrain_optimizer
from tests.conftest import tiny_config


def test_info_nce_matches_hand_computation() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # (D=2, K=3) keys as columns
    t = 0.5
    expected = []
    for qi, ki in zip(q.tolist(), k.tolist(), strict=True):
        pos = qi[0] * ki[0] + qi[1] * ki[1]
        negs = [qi[0] * queue[0, j].item() + qi[1] * queue[1, j].item() for j in range(3)]
        logits = [pos / t] + [n / t for n in negs]
        expected.append(-logits[0] + math.log(sum(math.exp(x) for x in logits)))
    got = info_nce(q, k, queue, t)
    assert got.item() == pytest.approx(sum(expected) / 2, rel=1e-6)



def test_info_nce_stays_fp32_under_autocast() -> None:
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(4, 128), dim=1), F.normalize(torch.randn(4, 128), dim=1)
    queue = F.normalize(torch.randn(128, 64), dim=0)
    reference = info_nce(q, k, queue, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(q.bfloat16(), k.bfloat16(), queue, 0.2)
    # Exactly the fp32 computation on the bf16-rounded embeddings: were autocast to run `q @ queue`
    # as a bf16 matmul, each logit would move by up to ~1e-2 (and this loss by ~2e-6 relative).
    assert got.dtype == torch.float32
    assert got.item() == info_nce(q.bfloat16().float(), k.bfloat16().float(), queue, 0.2).item()
    assert got.item() == pytest.approx(reference.item(), rel=1e-2)


def _fill_freed_memory_with_nan() -> None:
    """Allocate and free NaN-filled buffers of several sizes, so that an op that hands out memory
    without writing it returns NaN instead of whatever happened to be there (often zeros)."""
    for n in (1 << 16, 1 << 19, 1 << 21, 1 << 23):
        buffer = torch.full((n,), float("nan"))
        del buffer


def test_bf16_weight_gradients_on_1x1_maps_are_exact() -> None:
    """16-px patches reach layer4 as 1x1 maps. There, under CPU bf16 autocast, the weight gradient
    of layer4.0.conv1 (3x3, stride 2) must be that of fp32: exactly 0 on the 8 taps that only see
    padding, not uninitialised memory (the oneDNN AMX kernel leaves them unwritten, see
    pretrain.precision)."""
    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet18").to(memory_format=torch.channels_last)
    patches = torch.randn(36, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    conv = trunk.layer4[0].conv1
    padding_only = torch.ones(3, 3, dtype=torch.bool)
    padding_only[1, 1] = False
    for _ in range(3):  # a few tries: which memory the kernel is handed varies
        trunk.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            feats = trunk(patches)
        assert feats[2].shape[-2:] == (1, 1), "the test needs layer4's input to be a 1x1 map"
        loss = sum(f.float().square().mean() for f in feats)
        _fill_freed_memory_with_nan()
        loss.backward()
        for name, p in trunk.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        wrong = conv.weight.grad[:, :, padding_only]
        assert not wrong.any(), (f"{int(torch.count_nonzero(wrong))} of {wrong.numel()} padding-only weight "
                                 f"gradients are not 0 (max |g| {float(wrong.abs().max()):.3g})")


def _model(**overrides: object) -> DetCo:
    torch.manual_seed(0)
    return DetCo(tiny_config(**overrides))


def test_queue_enqueue_and_pointer_wrap() -> None:
    model = _model(queue_size=8)
    n_stages = len(model.stage_ids)
    keys = [F.normalize(torch.randn(4, 128), dim=1) for _ in range(n_stages)]
    local = [F.normalize(torch.randn(4, 128), dim=1) for _ in range(n_stages)]
    model.enqueue(keys, local)
    assert int(model.queue_ptr) == 4
    for s in range(n_stages):
        torch.testing.assert_close(model.queue_global[s, :, 0:4], keys[s].T)
        torch.testing.assert_close(model.queue_local[s, :, 0:4], local[s].T)
    keys2 = [F.normalize(torch.randn(4, 128), dim=1) for _ in range(n_stages)]
    model.enqueue(keys2, local)
    assert int(model.queue_ptr) == 0  # 8 slots filled: wrapped around
    torch.testing.assert_close(model.queue_global[0, :, 4:8], keys2[0].T)
    keys3 = [F.normalize(torch.randn(4, 128), dim=1) for _ in range(n_stages)]
    model.enqueue(keys3, local)
    torch.testing.assert_close(model.queue_global[0, :, 0:4], keys3[0].T)  # oldest keys replaced
    torch.testing.assert_close(model.queue_global[0, :, 4:8], keys2[0].T)


def test_enqueue_rejects_batch_that_does_not_divide_queue() -> None:
    model = _model(queue_size=8)
    keys = [torch.randn(3, 128) for _ in model.stage_ids]
    with pytest.raises(RuntimeError, match="not a multiple"):
        model.enqueue(keys, None)


def test_config_rejects_queue_not_multiple_of_batch() -> None:
    with pytest.raises(PretrainInputError, match="not a multiple of the global batch"):
        preset("smoke", queue_size=100, batch_size=16)


def test_momentum_update() -> None:
    model = _model()
    model.momentum = 0.9
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    before_q = [p.clone() for p in model.encoder_q.parameters()]
    before_k = [p.clone() for p in model.encoder_k.parameters()]
    model.momentum_update()
    for pq, pk0, pk in zip(before_q, before_k, model.encoder_k.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.9 * pk0 + 0.1 * pq)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


def test_key_encoder_starts_as_copy_of_query_encoder() -> None:
    model = _model()
    for pq, pk in zip(model.encoder_q.parameters(), model.encoder_k.parameters(), strict=True):
        assert torch.equal(pq, pk)


def test_jigsaw_patch_shapes_and_cell_shuffling() -> None:
    jig = JigsawPatches(resize=255, patch=64)
    # An image whose 3x3 cells have distinct constant values, geometry-only pipeline: each patch
    # must be constant and come from a distinct cell.
    image = torch.zeros(3, 255, 255)
    for cell in range(9):
        r, c = divmod(cell, 3)
        image[:, r * 85:(r + 1) * 85, c * 85:(c + 1) * 85] = cell
    jig.prepare = torch.nn.Identity()
    orders = set()
    for seed in range(6):
        torch.manual_seed(seed)
        patches = jig(image)
        assert patches.shape == (9, 3, 64, 64)
        ids = [int(p[0, 0, 0]) for p in patches]
        for p, i in zip(patches, ids, strict=True):
            assert torch.all(p == i)
        assert sorted(ids) == list(range(9))
        orders.add(tuple(ids))
    assert len(orders) > 1, "cells were never shuffled"


def test_full_augmentation_shapes() -> None:
    image = torch.randint(0, 256, (3, 300, 280), dtype=torch.uint8)
    torch.manual_seed(0)
    view = global_view_transform(224, randaugment=True, autoaugment=True)(image)
    assert view.shape == (3, 224, 224) and view.dtype == torch.float32
    patches = JigsawPatches(255, 64)(image)
    assert patches.shape == (9, 3, 64, 64) and patches.dtype == torch.float32


def _views(model: DetCo, n: int = 4) -> dict[str, torch.Tensor]:
    views = {"im_q": torch.randn(n, 3, 32, 32), "im_k": torch.randn(n, 3, 32, 32)}
    if model.local:
        views["patches_q"] = torch.randn(n, 9, 3, 16, 16)
        views["patches_k"] = torch.randn(n, 9, 3, 16, 16)
    return views


def test_detco_loss_terms_and_weights() -> None:
    model = _model(stage_weights=(0.1, 0.4, 0.7, 1.0))
    queue_before = model.queue_global.clone()
    total, terms = model(**_views(model))
    assert set(terms) == {f"{s}/{t}" for s in ("res2", "res3", "res4", "res5") for t in ("g2g", "l2l", "g2l")}
    weights = {"res2": 0.1, "res3": 0.4, "res4": 0.7, "res5": 1.0}
    expected = sum(weights[k.split("/")[0]] * v for k, v in terms.items())
    assert total.item() == pytest.approx(float(expected), rel=1e-5)
    assert all(math.isfinite(float(v)) for v in terms.values())
    assert not torch.equal(queue_before, model.queue_global)
    total.backward()
    grads = [p.grad for p in model.encoder_q.parameters()]
    assert all(g is not None for g in grads), "every query-encoder parameter gets a gradient"
    assert all(p.grad is None for p in model.encoder_k.parameters())


def test_g2l_term_uses_local_query_against_global_key() -> None:
    model = _model()
    views = _views(model)
    with torch.no_grad():
        q_l = model.encoder_q.local_embed(views["patches_q"])
        queue = model.queue_global.clone()
        k_enc = model.encoder_k
        # After the in-forward momentum update the key encoder equals the query encoder here
        # (identical weights), so the expected key can be computed beforehand.
        k_g = k_enc.global_embed(views["im_k"])
    _, terms = model(**views)
    expected = info_nce(q_l[3], k_g[3], queue[3], model.temperature)
    assert terms["res5/g2l"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ablation_axes_and_mocov2_special_case() -> None:
    only_global = _model(local_contrast=False)
    _, terms = only_global(**_views(only_global))
    assert set(terms) == {f"{s}/g2g" for s in ("res2", "res3", "res4", "res5")}
    assert not hasattr(only_global, "queue_local")

    only_res5 = _model(multi_level=False)
    _, terms = only_res5(**_views(only_res5))
    assert set(terms) == {"res5/g2g", "res5/l2l", "res5/g2l"}

    moco = _model(multi_level=False, local_contrast=False)
    total, terms = moco(**_views(moco))
    assert set(terms) == {"res5/g2g"}
    assert total.item() == pytest.approx(terms["res5/g2g"].item())
    assert tiny_config(multi_level=False, local_contrast=False).method == "mocov2"
    head = moco.encoder_q.global_heads[0]
    assert [m.__class__.__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[2].out_features == 128


def test_presets_follow_the_paper() -> None:
    detco = PRESETS["detco_r50_200ep"]
    assert (detco.arch, detco.epochs, detco.batch_size, detco.queue_size) == ("resnet50", 200, 256, 65536)
    assert (detco.key_momentum, detco.temperature, detco.base_lr, detco.dim) == (0.999, 0.2, 0.03, 128)
    assert detco.stage_weights == (0.1, 0.4, 0.7, 1.0) and detco.method == "detco"
    assert PRESETS["mocov2_r50_200ep"].method == "mocov2"
    assert PRESETS["detco_aa_r50_200ep"].method == "detco_aa"
    assert preset("smoke", batch_size=32, queue_size=256).lr == pytest.approx(0.03 * 32 / 256)


@pytest.mark.parametrize("cpus,local_world,expected", [(2, None, 1), (1, None, 0), (16, None, 15), (16, "8", 1)])
def test_worker_default_fits_the_machine(monkeypatch: pytest.MonkeyPatch, cpus: int, local_world: str | None,
                                         expected: int) -> None:
    """A preset's worker count is capped to the CPUs per process minus one; an explicit one is kept."""
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if local_world is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)
    assert machine_workers() == expected
    assert preset("detco_r50_200ep").workers == min(PRESETS["detco_r50_200ep"].workers, expected)
    assert preset("smoke", workers=None).workers == min(PRESETS["smoke"].workers, expected)
    assert preset("detco_r50_200ep", workers=6).workers == 6


# --- the step's parameter updates and queue copies: bit-identical to the straightforward step ---


class _CloneEveryStep:
    """The straightforward negatives: a fresh clone of each queue every step, enqueued in place."""

    def read(self, name: str, queue: torch.Tensor) -> torch.Tensor:
        return queue.clone().detach()

    def write(self, name: str, queue: torch.Tensor, index: tuple[int, slice, slice], values: torch.Tensor) -> None:
        queue[index] = values

    def held_by_backward(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()


class _StraightforwardDetCo(DetCo):
    """DetCo with the step as it was written first: full queue clones, whole-tensor momentum update."""

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.queue_copies = _CloneEveryStep()  # type: ignore[assignment]

    @torch.no_grad()
    def momentum_update(self) -> None:
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1.0 - self.momentum)


def _train_steps(model: DetCo, optimizer: torch.optim.Optimizer, steps: int) -> list[dict[str, torch.Tensor]]:
    """`steps` training steps as pretrain.train runs them (cosine lr per step) on seeded random views;
    returns each step's loss and terms."""
    out = []
    for step in range(steps):
        torch.manual_seed(100 + step)
        views = _views(model)
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * (1 + math.cos(math.pi * step / steps)) * 0.03
        loss, terms = model(**views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        out.append({"loss": loss.detach(), **terms})
    return out


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.mark.parametrize("overrides", [{}, {"bn_splits": 2}, {"multi_level": False, "local_contrast": False}],
                         ids=["detco", "detco-split-bn", "mocov2"])
def test_steps_bit_identical_to_straightforward_step(overrides: dict[str, object]) -> None:
    """Steps with pretrain.optim's SGD and momentum update and the kept queue copies give the same
    bits as torch's for-loop SGD, the whole-tensor momentum update and a queue clone per step:
    losses, every weight and buffer (both encoders, queues, queue pointer, BN statistics) and the
    SGD momentum buffers. Three steps wrap the 8-key queue around (batch 4)."""
    cfg = tiny_config(queue_size=8, weight_decay=1e-4, **overrides)
    torch.manual_seed(0)
    model = DetCo(cfg)
    torch.manual_seed(0)
    reference = _StraightforwardDetCo(cfg)
    optimizer = pretrain_optimizer(model, cfg)
    ref_optimizer = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=cfg.lr,
                                    momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay, foreach=False)
    assert any(p.numel() > SLICE and p.numel() % SLICE for p in model.parameters()), "no sliced tensor with a tail"

    got, expected = _train_steps(model, optimizer, 3), _train_steps(reference, ref_optimizer, 3)
    for step, (g, e) in enumerate(zip(got, expected, strict=True)):
        _assert_identical(g, e, f"step {step + 1} loss")
    _assert_identical(model.state_dict(), reference.state_dict(), "weights and buffers")
    bufs = {str(i): optimizer.state[p]["momentum_buffer"] for i, p in enumerate(optimizer.param_groups[0]["params"])}
    ref_bufs = {str(i): ref_optimizer.state[p]["momentum_buffer"]
                for i, p in enumerate(ref_optimizer.param_groups[0]["params"])}
    _assert_identical(bufs, ref_bufs, "SGD momentum buffers")
    assert optimizer.state_dict()["param_groups"] == [
        g | {"foreach": None} for g in ref_optimizer.state_dict()["param_groups"]], "same state dict as torch's SGD"


@pytest.mark.parametrize("numel", [1, SLICE, SLICE + 1, 5 * SLICE + 4099])
def test_sliced_updates_match_whole_tensor_ops(numel: int) -> None:
    """ATen gives each element of these ops the same bits wherever it falls in the tensor (slice
    boundaries move the vectorised body / scalar tail split), the premise of pretrain.optim."""
    torch.manual_seed(numel)
    p, g, buf, q = (torch.randn(numel) * 10.0 ** float(e) for e in (0, -3, -2, 0))
    k_sliced, k_whole = p.clone(), p.clone()
    momentum_update_([k_sliced], [q], 0.999)
    k_whole.mul_(0.999).add_(q, alpha=1 - 0.999)
    assert torch.equal(k_sliced, k_whole)

    params = [torch.nn.Parameter(p.clone()) for _ in range(2)]
    opts = [SlicedSGD([params[0]], lr=0.1, momentum=0.9, weight_decay=1e-4),
            torch.optim.SGD([params[1]], lr=0.1, momentum=0.9, weight_decay=1e-4, foreach=False)]
    for step in range(3):
        for param, opt in zip(params, opts, strict=True):
            param.grad = (g * (step + 1)).clone()
            opt.param_groups[0]["lr"] = 0.1 / (step + 1)
            opt.step()
    assert torch.equal(params[0], params[1])
    assert torch.equal(opts[0].state[params[0]]["momentum_buffer"], opts[1].state[params[1]]["momentum_buffer"])


def test_pending_backward_keeps_its_negatives() -> None:
    """Two forwards, then the first loss's backward: it reads the queues as its own forward did
    (its copy is held, not rewritten), as with a clone per step."""
    grads = []
    for cls in (DetCo, _StraightforwardDetCo):
        torch.manual_seed(0)
        model = cls(tiny_config())
        torch.manual_seed(1)
        first, _ = model(**_views(model))
        second, _ = model(**_views(model))
        first.backward()
        grads.append([p.grad.clone() for p in model.encoder_q.parameters() if p.grad is not None])
        second.backward()
    assert len(grads[0]) == len(grads[1]) > 0
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_queue_copies_follow_every_change_of_the_queue() -> None:
    """A copy equals its queue after tracked writes (updated in place, the same storage), after an
    untracked in-place change and after the queue is replaced; a copy a graph holds is left alone."""
    copies = QueueCopies()
    queue = torch.randn(2, 4, 8)
    first = copies.read("q", queue)
    assert torch.equal(first, queue) and first.data_ptr() != queue.data_ptr()
    copies.write("q", queue, (1, slice(None), slice(2, 4)), torch.ones(4, 2))
    again = copies.read("q", queue)
    assert torch.equal(again, queue) and again.data_ptr() == first.data_ptr()
    queue.mul_(2)  # not through `write`: the version counter tells
    assert torch.equal(copies.read("q", queue), queue)
    replaced = torch.randn(2, 4, 8)
    assert torch.equal(copies.read("q", replaced), replaced)

    x = torch.randn(3, 4, requires_grad=True)
    held = copies.read("q", replaced)
    with copies.held_by_backward():
        loss = (x @ held[0]).sum()  # saves a view of the copy for backward
    kept = held.clone()
    copies.write("q", replaced, (0, slice(None), slice(0, 2)), torch.zeros(4, 2))
    fresh = copies.read("q", replaced)
    assert fresh.data_ptr() != held.data_ptr() and torch.equal(held, kept) and torch.equal(fresh, replaced)
    loss.backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 8) @ kept[0].T)  # the values the forward read
    # The backward released it (`loss` and its graph are still alive, as in the training loop).
    assert held.data_ptr() != fresh.data_ptr() and not copies._held_copy(held)
    assert copies.read("q", replaced).data_ptr() == fresh.data_ptr(), "the current copy is reused"
