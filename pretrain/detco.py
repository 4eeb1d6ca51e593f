"""DetCo (Xie et al., ICCV 2021) with MoCo v2 as its special case.

Per contrasted stage s (res2..res5 with multi-level supervision, res5 alone without):
  global head  g_s: pooled stage feature (C_s)      -> MLP -> 128-d
  local head   l_s: 9 pooled patch features (9*C_s) -> MLP -> 128-d
  a global queue and a local queue of keys (dim, K).
Loss = sum_s w_s * (L_g<->g + L_l<->l + L_g<->l), each an InfoNCE with temperature T:
  L_g<->g: query global view vs key global view, negatives from the global queue
  L_l<->l: query patch set  vs key patch set,   negatives from the local queue
  L_g<->l: query patch set  vs key global view,  negatives from the global queue
With local_contrast off only L_g<->g remains; with multi_level off only res5 (weight 1) remains;
with both off this is exactly MoCo v2.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from pretrain.config import PretrainConfig
from pretrain.distributed import batch_shuffle, batch_unshuffle, concat_all_gather, world_size
from pretrain.optim import momentum_update_
from pretrain.precision import guard_strided_convs, unit_vectors
from pretrain.split_bn import local_shuffle, local_unshuffle, use_split_bn

STAGES = ("res2", "res3", "res4", "res5")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without avgpool/fc, keeping torchvision's parameter names, so its
    state dict *is* a torchvision backbone state dict (minus `fc.*`)."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage_channels: tuple[int, ...] = tuple(
            layer[-1].conv3.out_channels if hasattr(layer[-1], "conv3") else layer[-1].conv2.out_channels
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4))
        guard_strided_convs(self)  # small crops reach the deep stages as 1x1 maps: see pretrain.precision

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) images -> [res2 .. res5] feature maps, each (N, C_s, H/4/2^s, ...)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            out.append(x)
        return out


def mlp_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """MoCo v2's projection head: Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class Encoder(nn.Module):
    """Backbone plus one global head (and optionally one local head) per contrasted stage."""

    def __init__(self, arch: str, stage_ids: tuple[int, ...], dim: int, local: bool) -> None:
        super().__init__()
        self.backbone = ResNetTrunk(arch)
        self.stage_ids = stage_ids
        hidden = self.backbone.stage_channels[-1]  # 2048 for ResNet-50, as MoCo v2's head
        chans = [self.backbone.stage_channels[i] for i in stage_ids]
        self.global_heads = nn.ModuleList(mlp_head(c, hidden, dim) for c in chans)
        self.local_heads = nn.ModuleList(mlp_head(9 * c, hidden, dim) for c in chans) if local else None

    def pooled(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> per contrasted stage the global-average-pooled feature (N, C_s)."""
        feats = self.backbone(images)
        return [feats[i].mean(dim=(2, 3)).float() for i in self.stage_ids]

    def global_embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) -> per stage an L2-normalised fp32 embedding (N, dim)."""
        return [unit_vectors(h(f)) for h, f in zip(self.global_heads, self.pooled(images), strict=True)]

    def local_embed(self, patches: torch.Tensor) -> list[torch.Tensor]:
        """(N, 9, 3, P, P) patch sets -> per stage an L2-normalised fp32 embedding (N, dim) of the 9
        pooled patch features concatenated in the (shuffled) patch order."""
        n = patches.shape[0]
        # Patch-major rows (row p*N + i: patch p of image i): split-BN's group j (rows j::k, k
        # dividing N) then holds the 9 patches of exactly the images of group j of the global
        # views, as on k processes. BN statistics do not depend on the order otherwise.
        pooled = self.pooled(patches.transpose(0, 1).flatten(0, 1))  # each (9*N, C_s)
        assert self.local_heads is not None
        return [unit_vectors(h(f.view(9, n, -1).transpose(0, 1).reshape(n, -1)))  # (N, 9*C_s), patch order
                for h, f in zip(self.local_heads, pooled, strict=True)]


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries q (N, D) against positives k (N, D) and negatives queue (D, K).

    logits = [q.k, q.queue] / T, target index 0; the mean cross-entropy over the batch, computed
    in fp32 whatever the autocast state.
    """
    # Casting alone is not enough: autocast runs `q @ queue` in bf16 even on fp32 operands.
    with torch.autocast(q.device.type, enabled=False):
        q, k = q.float(), k.float()
        pos = (q * k).sum(dim=1, keepdim=True)
        neg = q @ queue.float()
        logits = torch.cat([pos, neg], dim=1) / temperature
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


QueueIndex = tuple[int, slice, slice]  # queue[stage, :, columns]


class _Held:
    """What a backward graph saves in place of a view of a queue copy: the copy is not rewritten
    while one is alive (the graph frees it after its backward, or when it is dropped)."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


class QueueCopies:
    """Copies of the queues for the loss to read as negatives, kept from step to step.

    The loss reads each queue before the enqueue replaces its oldest keys in place, and its
    backward needs the values it read: so it reads a copy. A new full copy every step (MoCo's
    `queue.clone()`) costs a queue-sized allocation and copy (two 134 MB queues for DetCo with
    ResNet-50); these copies are kept and brought up to date by copying only the columns the
    enqueues wrote since (`write`). That needs nothing else to have written the queue or the copy
    since, which their autograd version counters tell; otherwise the copy is refreshed in full. A
    copy that a backward graph still holds (a loss whose backward has not run) is never rewritten:
    a new one replaces it. Every backward therefore reads exactly the values its forward read.
    """

    def __init__(self) -> None:
        self._copies: dict[str, torch.Tensor] = {}
        self._sources: dict[str, weakref.ref[torch.Tensor]] = {}  # the queue each copy mirrors
        self._versions: dict[str, tuple[int, int]] = {}  # (queue, copy) versions when last in sync
        self._stale: dict[str, list[QueueIndex]] = {}  # queue entries written since
        self._held: weakref.WeakSet[_Held] = weakref.WeakSet()

    def _in_sync(self, name: str, queue: torch.Tensor) -> bool:
        """Whether the copy equals `queue` but for the entries in `_stale`."""
        copy_ = self._copies.get(name)
        return (copy_ is not None and self._sources[name]() is queue
                and self._versions[name] == (queue._version, copy_._version))

    def read(self, name: str, queue: torch.Tensor) -> torch.Tensor:
        """A copy of `queue` (the buffer called `name`), equal to it now."""
        copy_ = self._copies.get(name)
        reusable = copy_ is not None and not self._held_copy(copy_)
        if reusable and self._in_sync(name, queue):
            for index in self._stale[name]:
                copy_[index] = queue[index]
        elif reusable and (copy_.shape, copy_.dtype, copy_.device) == (queue.shape, queue.dtype, queue.device):
            copy_.copy_(queue)
        else:
            copy_ = self._copies[name] = queue.detach().clone()
        self._sources[name], self._stale[name] = weakref.ref(queue), []
        self._versions[name] = (queue._version, copy_._version)
        return copy_

    def _held_copy(self, copy_: torch.Tensor) -> bool:
        storage = copy_.untyped_storage().data_ptr()
        return any(h.tensor.untyped_storage().data_ptr() == storage for h in self._held)

    @torch.no_grad()
    def write(self, name: str, queue: torch.Tensor, index: QueueIndex, values: torch.Tensor) -> None:
        """queue[index] = values (`queue` is the buffer called `name`), noting the entries written."""
        in_sync = self._in_sync(name, queue)
        queue[index] = values
        if in_sync:
            self._stale[name].append(index)
            self._versions[name] = (queue._version, self._versions[name][1])

    @contextmanager
    def held_by_backward(self) -> Iterator[None]:
        """Within it, a view of a copy that autograd saves for backward marks that copy as held."""
        storages = {c.untyped_storage().data_ptr() for c in self._copies.values()}

        def pack(t: torch.Tensor) -> torch.Tensor | _Held:
            if t.untyped_storage().data_ptr() not in storages:
                return t
            held = _Held(t)
            self._held.add(held)
            return held

        def unpack(saved: torch.Tensor | _Held) -> torch.Tensor:
            return saved.tensor if isinstance(saved, _Held) else saved

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield

    def __getstate__(self) -> dict[str, object]:
        return {}  # a cache: a pickled or deep-copied model starts with none

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__()  # type: ignore[misc]


class DetCo(nn.Module):
    """The query and key encoders, their queues and the loss.

    With `cfg.bn_splits` k > 1 both encoders use split-BN (pretrain.split_bn), and on one process
    the key encoder's batch is shuffled locally; under DDP it is shuffled across processes
    (shuffle-BN). `cfg.bn_splits` None means 1 here; `pretrain.train` resolves the automatic value.
    """

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        self.stage_ids = (0, 1, 2, 3) if cfg.multi_level else (3,)
        self.stage_names = tuple(STAGES[i] for i in self.stage_ids)
        self.weights = tuple(cfg.stage_weights) if cfg.multi_level else (1.0,)
        self.local = cfg.local_contrast
        self.momentum, self.temperature, self.queue_size = cfg.key_momentum, cfg.temperature, cfg.queue_size

        self.bn_splits = cfg.bn_splits or 1
        self.encoder_q = Encoder(cfg.arch, self.stage_ids, cfg.dim, cfg.local_contrast)
        if self.bn_splits > 1:
            use_split_bn(self.encoder_q, self.bn_splits)  # the key encoder is a copy: it gets them too
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False

        n = len(self.stage_ids)
        self.register_buffer("queue_global", F.normalize(torch.randn(n, cfg.dim, cfg.queue_size), dim=1))
        if self.local:
            self.register_buffer("queue_local", F.normalize(torch.randn(n, cfg.dim, cfg.queue_size), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.queue_copies = QueueCopies()  # what the loss reads as negatives

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, over all encoder parameters (backbone and heads)."""
        momentum_update_(list(self.encoder_k.parameters()), list(self.encoder_q.parameters()), self.momentum)

    def key_shuffle(self, *xs: torch.Tensor) -> tuple[list[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """Shuffle-BN for the key encoder: the key inputs (each (N, ...), an image and its patch set
        together) permuted so its BN groups differ from the query's, and the function that puts its
        outputs back in order. Across processes under DDP; within the batch on one process with
        split-BN; nothing to do on one process with a single BN group (the order cannot matter)."""
        if world_size() > 1:
            shuffled, index = batch_shuffle(*xs)
            return shuffled, lambda k: batch_unshuffle(k, index)
        if self.bn_splits > 1:
            shuffled, index = local_shuffle(*xs)
            return shuffled, lambda k: local_unshuffle(k, index)
        return list(xs), lambda k: k

    @torch.no_grad()
    def enqueue(self, keys_global: list[torch.Tensor], keys_local: list[torch.Tensor] | None) -> None:
        """Replace the oldest keys by this step's keys, gathered from all ranks first."""
        ptr = int(self.queue_ptr)
        gathered_g = [concat_all_gather(k) for k in keys_global]
        batch = gathered_g[0].shape[0]
        if self.queue_size % batch:
            raise RuntimeError(f"queue size {self.queue_size} is not a multiple of the global batch {batch}")
        columns = slice(ptr, ptr + batch)
        for s, k in enumerate(gathered_g):
            self.queue_copies.write("queue_global", self.queue_global, (s, slice(None), columns),
                                    k.T.to(self.queue_global.dtype))
        if keys_local is not None:
            for s, k in enumerate(keys_local):
                self.queue_copies.write("queue_local", self.queue_local, (s, slice(None), columns),
                                        concat_all_gather(k).T.to(self.queue_local.dtype))
        self.queue_ptr.fill_((ptr + batch) % self.queue_size)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, patches_q: torch.Tensor | None = None,
                patches_k: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Global views (N, 3, S, S) and, with local contrast, patch sets (N, 9, 3, P, P).

        Returns the weighted total loss and its unweighted terms per stage ("res5/g2g", ...).
        """
        q_g = self.encoder_q.global_embed(im_q)
        q_l = self.encoder_q.local_embed(patches_q) if self.local else None

        with torch.no_grad():
            self.momentum_update()
            if self.local:
                assert patches_k is not None
                (im_k_s, patches_k_s), unshuffle = self.key_shuffle(im_k, patches_k)
                k_l = [unshuffle(k) for k in self.encoder_k.local_embed(patches_k_s)]
            else:
                (im_k_s,), unshuffle = self.key_shuffle(im_k)
                k_l = None
            k_g = [unshuffle(k) for k in self.encoder_k.global_embed(im_k_s)]

        terms: dict[str, torch.Tensor] = {}
        total = im_q.new_zeros((), dtype=torch.float32)
        # Negatives: the queues as they are before this step's keys go in, read from copies that
        # the enqueue below leaves alone (the backward of the loss needs those values).
        queue_g = self.queue_copies.read("queue_global", self.queue_global)
        queue_l = self.queue_copies.read("queue_local", self.queue_local) if self.local else None
        with self.queue_copies.held_by_backward():
            for s, (name, w) in enumerate(zip(self.stage_names, self.weights, strict=True)):
                stage_terms = {"g2g": info_nce(q_g[s], k_g[s], queue_g[s], self.temperature)}
                if q_l is not None and k_l is not None and queue_l is not None:
                    stage_terms["l2l"] = info_nce(q_l[s], k_l[s], queue_l[s], self.temperature)
                    stage_terms["g2l"] = info_nce(q_l[s], k_g[s], queue_g[s], self.temperature)
                for term, value in stage_terms.items():
                    terms[f"{name}/{term}"] = value.detach()
                    total = total + w * value
        self.enqueue(k_g, k_l)
        return total, terms

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The query backbone in torchvision ResNet naming (no `fc.*`), detached copies on CPU."""
        return {k: v.detach().cpu().clone() for k, v in self.encoder_q.backbone.state_dict().items()}
