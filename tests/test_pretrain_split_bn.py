"""Split-BN: one process with k BN groups normalises exactly like k processes with plain BN, its key
batch is shuffled within the process, and k is chosen (or refused) as documented."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pretrain import detco as detco_module
from pretrain.config import PretrainConfig
from pretrain.detco import DetCo, Encoder
from pretrain.errors import PretrainInputError
from pretrain.split_bn import (
    SplitBatchNorm2d,
    local_shuffle,
    local_unshuffle,
    resolve_bn_splits,
    use_split_bn,
    valid_splits,
)
from tests.conftest import tiny_config


def _random_bn(channels: int) -> nn.BatchNorm2d:
    """A plain BN with non-trivial affine parameters and running statistics."""
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    return bn


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("channels_last", [False, True])
def test_split_bn_equals_k_processes_of_plain_bn(k: int, channels_last: bool) -> None:
    """One global batch of 16 through split-BN with k groups == k "processes", each a copy of plain BN
    in train mode on its own share of the batch (samples j::k): same outputs, same input and
    parameter gradients (summed over processes, as DDP's all-reduce does up to its 1/k), and running
    statistics equal to the mean of the k processes' buffers."""
    torch.manual_seed(k)
    plain = _random_bn(6)
    x = torch.randn(16, 6, 5, 3) * 3 + 1
    upstream = torch.randn(16, 6, 5, 3)  # d loss / d output
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    split = copy.deepcopy(plain)
    assert use_split_bn(split, k) == 1 and isinstance(split, SplitBatchNorm2d)
    xs = x.clone().requires_grad_(True)
    out = split(xs)
    (out * upstream).sum().backward()
    assert out.shape == x.shape and out.is_contiguous(memory_format=torch.channels_last) == channels_last

    processes = [copy.deepcopy(plain) for _ in range(k)]
    xp = x.clone().requires_grad_(True)
    for j, bn in enumerate(processes):
        out_j = bn(xp[j::k])
        (out_j * upstream[j::k]).sum().backward()
        torch.testing.assert_close(out[j::k], out_j, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xs.grad, xp.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.weight.grad, sum(bn.weight.grad for bn in processes), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.bias.grad, sum(bn.bias.grad for bn in processes), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split.running_mean, torch.stack([bn.running_mean for bn in processes]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([bn.running_var for bn in processes]).mean(0))
    assert int(split.num_batches_tracked) == int(processes[0].num_batches_tracked) == 1
    # The running statistics moved: a split-BN that ignored them would fail above only by luck.
    assert not torch.allclose(split.running_mean, plain.running_mean)

    # Eval mode: plain BN with the averaged statistics.
    split.eval()
    reference = copy.deepcopy(processes[0]).eval()
    reference.running_mean.copy_(split.running_mean)
    reference.running_var.copy_(split.running_var)
    with torch.no_grad():
        torch.testing.assert_close(split(x), reference(x))


def test_split_bn_keeps_state_dict_keys_and_refuses_a_batch_it_cannot_split() -> None:
    bn = _random_bn(4)
    keys = list(bn.state_dict())
    use_split_bn(bn, 4)
    assert list(bn.state_dict()) == keys
    with pytest.raises(ValueError, match="does not divide into 4 groups"):
        bn(torch.randn(6, 4, 2, 2))


def test_encoder_with_split_bn_equals_k_processes_for_images_and_their_patches() -> None:
    """A whole encoder (ResNet-18 trunk + heads) with split-BN, on a global batch of images and
    their 9-patch sets, gives for every image the embeddings a plain encoder gives on its group's
    images alone: the patch batch is split by the same images as the global views."""
    k, n = 2, 4
    torch.manual_seed(0)
    plain = Encoder("resnet18", (0, 1, 2, 3), 16, local=True)
    split = copy.deepcopy(plain)
    assert use_split_bn(split, k) == 20  # every BN of the trunk
    images, patches = torch.randn(n, 3, 32, 32), torch.randn(n, 9, 3, 16, 16)
    with torch.no_grad():
        got_g, got_l = split.global_embed(images), split.local_embed(patches)
        for j in range(k):
            process = copy.deepcopy(plain)
            want_g, want_l = process.global_embed(images[j::k]), process.local_embed(patches[j::k])
            for s in range(4):
                torch.testing.assert_close(got_g[s][j::k], want_g[s], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(got_l[s][j::k], want_l[s], rtol=1e-4, atol=1e-5)
        # Not vacuous: one BN group over the whole batch gives different embeddings.
        assert not torch.allclose(plain.local_embed(patches)[3], got_l[3], atol=1e-3)


def test_local_shuffle_moves_an_image_with_its_patches_and_unshuffle_restores_order() -> None:
    torch.manual_seed(0)
    ids = torch.arange(8, dtype=torch.float32)
    patches = ids.view(8, 1, 1).expand(8, 9, 3).contiguous()
    (ids_s, patches_s), unshuffle = local_shuffle(ids, patches)
    assert not torch.equal(ids_s, ids), "the batch was not permuted"
    assert sorted(ids_s.tolist()) == ids.tolist()
    assert torch.equal(patches_s[:, :, 0], ids_s[:, None].expand(8, 9)), "image and patch set must move together"
    assert torch.equal(local_unshuffle(ids_s * 10, unshuffle), ids * 10)
    assert torch.equal(local_unshuffle(patches_s, unshuffle), patches)


@pytest.mark.parametrize("bn_splits,shuffled", [(2, True), (None, False)])
def test_detco_key_encoder_sees_the_shuffled_batch_on_one_process(
        monkeypatch: pytest.MonkeyPatch, bn_splits: int | None, shuffled: bool) -> None:
    torch.manual_seed(0)
    model = DetCo(tiny_config(bn_splits=bn_splits))
    views = {"im_q": torch.randn(4, 3, 32, 32), "im_k": torch.randn(4, 3, 32, 32),
             "patches_q": torch.randn(4, 9, 3, 16, 16), "patches_k": torch.randn(4, 9, 3, 16, 16)}
    seen: dict[str, torch.Tensor] = {}
    shuffle_out: list[torch.Tensor] = []

    def spy_shuffle(*xs: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        result = local_shuffle(*xs)
        shuffle_out.extend(result[0])
        return result

    global_embed, local_embed = model.encoder_k.global_embed, model.encoder_k.local_embed
    monkeypatch.setattr(detco_module, "local_shuffle", spy_shuffle)
    monkeypatch.setattr(model.encoder_k, "global_embed", lambda x: seen.setdefault("im", x) is x and global_embed(x))
    monkeypatch.setattr(model.encoder_k, "local_embed", lambda x: seen.setdefault("patches", x) is x and local_embed(x))
    model(**views)
    if not shuffled:
        assert not shuffle_out
        assert seen["im"] is views["im_k"] and seen["patches"] is views["patches_k"]
        return
    im_s, patches_s = shuffle_out
    assert torch.equal(seen["im"], im_s) and torch.equal(seen["patches"], patches_s)
    # The same permutation for images and patch sets, and a real one for this seed.
    perm = [next(i for i in range(4) if torch.equal(views["im_k"][i], im_s[r])) for r in range(4)]
    assert sorted(perm) == [0, 1, 2, 3]
    assert torch.equal(patches_s, views["patches_k"][perm])
    assert all(isinstance(m, SplitBatchNorm2d) and m.num_splits == 2
               for m in model.encoder_k.modules() if isinstance(m, nn.BatchNorm2d))


def test_split_bn_model_keeps_the_plain_state_dict_keys() -> None:
    plain = DetCo(tiny_config())
    split = DetCo(tiny_config(bn_splits=2))
    assert list(plain.state_dict()) == list(split.state_dict())
    assert list(plain.backbone_state_dict()) == list(split.backbone_state_dict())


@pytest.mark.parametrize("requested,batch,world,expected,noted", [
    (None, 16, 1, 8, False),  # the smoke preset: 8 groups of 2
    (None, 256, 1, 8, False),
    (None, 4, 1, 2, True),  # too small for 8 groups of 2: the largest valid k below 8
    (None, 12, 1, 6, True),
    (None, 3, 1, 1, True),
    (None, 32, 8, 1, False),  # DDP: shuffle-BN across processes
    (4, 16, 1, 4, False),
    (2, 16, 2, 2, False),  # explicit under DDP: per-process groups
])
def test_resolve_bn_splits(requested: int | None, batch: int, world: int, expected: int, noted: bool) -> None:
    chosen = resolve_bn_splits(requested, batch, world)
    assert chosen.splits == expected and (chosen.note is not None) == noted
    if noted:
        assert f"using {expected} group" in str(chosen.note)


@pytest.mark.parametrize("requested,batch", [(3, 16), (16, 16), (5, 4)])
def test_explicit_bn_splits_that_do_not_fit_are_refused(requested: int, batch: int) -> None:
    with pytest.raises(PretrainInputError, match=f"--bn-splits {requested} does not divide.*valid values: 1, "):
        resolve_bn_splits(requested, batch, 1)


def test_valid_splits_and_config_validation() -> None:
    assert valid_splits(16) == [1, 2, 4, 8]
    assert valid_splits(1) == [1]
    with pytest.raises(PretrainInputError, match="at least 1"):
        PretrainConfig(bn_splits=0).validate()
