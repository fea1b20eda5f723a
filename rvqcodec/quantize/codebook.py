"""A Euclidean codebook: nearest-neighbour lookup, k-means initialisation, EMA or gradient learning and
dead-code replacement, kept identical across processes under ``torch.distributed``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributed import all_reduce_sum_, broadcast_, is_distributed
from .kmeans import kmeans, nearest_code, sample_rows

CODEBOOK_LEARNING = ("ema", "grad", "transform")


class EuclideanCodebook(nn.Module):
    """K code vectors of dimension d.

    Args:
        dim: code dimension d.
        codebook_size: number of codes K.
        learning: ``"ema"`` — codes are exponential moving averages of the vectors assigned to them (decay
            ``decay``, Laplace smoothing ``epsilon``; the codebook gets no gradient), ``"grad"`` — codes are an
            ``nn.Parameter`` learned by the quantizer's codebook loss, or ``"transform"`` — an integrated codebook
            transform (GRIT-VQ's, as read from its abstract; arXiv 2602.01140): the codes are
            ``C = B·Wᵀ`` (:meth:`vectors`), B = ``embed`` a fixed base codebook (a buffer: k-means init and
            dead-code replacement write it) and W = ``transform`` a (d, d) ``nn.Parameter`` shared by all codes,
            learned by the codebook loss, so that every update moves every code. W starts as the identity (and
            k-means init resets it to the identity), so the first codes are exactly B.
        decay: EMA decay of cluster sizes and sums (0.99 as in EnCodec/DAC-era audio codecs).
        epsilon: Laplace smoothing of cluster sizes.
        kmeans_init: initialise from the first batch by k-means (``kmeans_iters`` Lloyd iterations). Without it the
            codes start uniformly in ±1/K (the taming/VQGAN default, i.e. tiny codes).
        dead_code_threshold: a code is dead when its EMA usage (frames per step) is below this fraction of the mean
            usage (``total / K``). Dead codes are re-seeded from the current batch every
            ``dead_code_interval`` training steps and given the mean usage. 0 disables replacement.
            The EMA rule lags: right after k-means initialisation every code carries its share of the
            initialisation frames as usage, so a code that the (still moving) encoder never picks stays above
            the threshold for ~ln(1/threshold)/(1 - decay) steps. :meth:`dead_mask` (what the statistics report
            as ``dead_codes``) therefore also counts the codes that no frame has reached since they were set
            (see ``unused_since_init``), while only the rule above (and ``dead_code_patience``) re-seeds codes.
        dead_code_patience: also dead, and replaced at the same time, is a code that no vector was assigned to in
            this many consecutive updates (steps in which the stage ran). It reacts within ``patience`` steps,
            where the EMA rule needs ~ln(1/threshold)/(1 - decay) steps (230 at decay 0.99) to notice a code
            that fell out of use, e.g. after k-means initialisation while the encoder still moves. Choose it so
            that a live code is rarely idle that long: with N vectors per step a code of average use is idle
            in a step with probability ≈ e^(-N/K). 0 (default) disables the rule.
        l2_normalize_lookup: nearest neighbour by cosine similarity (l2-normalised vectors and codes, as DAC);
            the returned codes are the raw vectors.

    Buffer ``unused_since_init`` (K,) bool: the codes that no training frame has been assigned to since they were
    last set — by k-means initialisation, by re-seeding, or (a codebook without k-means init) since its first
    training update. Training bookkeeping only: not in the state dict (so not in the model id), but saved
    with a run's other non-persistent buffers, so a resumed run reports what an uninterrupted one does; a
    codebook loaded from a checkpoint starts with none.
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        learning: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        dead_code_threshold: float = 0.1,
        dead_code_interval: int = 1,
        dead_code_patience: int = 0,
        l2_normalize_lookup: bool = False,
    ):
        super().__init__()
        if learning not in CODEBOOK_LEARNING:
            raise ValueError(f"unknown codebook learning {learning!r}; choose from {', '.join(CODEBOOK_LEARNING)}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.dim = dim
        self.codebook_size = codebook_size
        self.learning = learning
        self.decay = decay
        self.epsilon = epsilon
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = dead_code_threshold
        self.dead_code_interval = max(1, dead_code_interval)
        if dead_code_patience < 0:
            raise ValueError(f"dead_code_patience must be >= 0, got {dead_code_patience}")
        self.dead_code_patience = int(dead_code_patience)
        self.l2_normalize_lookup = l2_normalize_lookup

        init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
        if learning == "grad":
            self.embed = nn.Parameter(init)
        else:
            self.register_buffer("embed", init)
        if learning == "transform":  # ``embed`` is the base B; the codes are B·Wᵀ
            self.transform = nn.Parameter(torch.eye(dim))
        self.register_buffer("embed_sum", init.clone())
        self.register_buffer("cluster_size", torch.ones(codebook_size))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("replaced_total", torch.zeros((), dtype=torch.long))
        if self.dead_code_patience > 0:  # only then: checkpoints of codebooks without the rule keep their keys
            self.register_buffer("idle_steps", torch.zeros(codebook_size, dtype=torch.long))
        self.register_buffer("unused_since_init", torch.zeros(codebook_size, dtype=torch.bool), persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Codebooks load across the training-only options: across ``dead_code_patience`` (a state without the idle
        counters starts them at zero; a codebook without the rule ignores them) and into a codebook without
        ``kmeans_init``, for which codes not yet k-means-initialised are its random start, as when it is built."""
        if self.learning == "transform" and prefix + "transform" not in state_dict and prefix + "embed" in state_dict:
            # a plain codebook continues as a transform codebook: W = I keeps its codes as they were
            state_dict[prefix + "transform"] = torch.eye(self.dim, dtype=self.transform.dtype)
        key = prefix + "idle_steps"
        if self.dead_code_patience > 0 and key not in state_dict and prefix + "embed" in state_dict:
            state_dict[key] = torch.zeros_like(self.idle_steps)
        elif self.dead_code_patience == 0:
            state_dict.pop(key, None)
        if not self.kmeans_init and prefix + "initialized" in state_dict:
            state_dict[prefix + "initialized"] = torch.ones_like(self.initialized)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def is_initialized(self) -> bool:
        """Whether the codes hold data (k-means done, or not wanted). Read from the device once and cached until
        the ``initialized`` buffer changes (torch's version counter: ``fill_``, ``copy_``, ``load_state_dict``),
        so a training step does not wait for the GPU to answer it."""
        version = self.initialized._version
        cached = getattr(self, "_initialized_cache", None)
        if cached is None or cached[0] != version or cached[1] is not self.initialized:
            cached = (version, self.initialized, bool(self.initialized))
            self._initialized_cache = cached
        return cached[2]

    # ------------------------------------------------------------------ lookup
    def vectors(self) -> Tensor:
        """The (K, d) code vectors: ``embed`` itself (``"ema"``, ``"grad"``), or ``embed·transformᵀ``
        (``"transform"``; float32 or wider, autocast off; differentiable w.r.t. ``transform``)."""
        if self.learning != "transform":
            return self.embed
        work = torch.promote_types(self.embed.dtype, torch.float32)
        with torch.autocast(device_type=self.embed.device.type, enabled=False):
            return self.embed.to(work) @ self.transform.to(work).T

    @torch.no_grad()
    def _base_rows(self, codes: Tensor) -> Tensor:
        """Base rows that :meth:`vectors` maps onto the (n, d) code vectors ``codes``: ``codes`` itself, or
        (``"transform"``) ``codes·(W⁺)ᵀ`` (the inverse of W when W is invertible; pseudo-inverse otherwise)."""
        if self.learning != "transform":
            return codes.to(self.embed.dtype)
        with torch.autocast(device_type=codes.device.type, enabled=False):
            inverse = torch.linalg.pinv(self.transform.detach().float())
            return (codes.float() @ inverse.T).to(self.embed.dtype)

    def lookup(self, x: Tensor) -> Tensor:
        """Nearest code indices for (N, d) vectors → (N,) int64."""
        with torch.no_grad():
            codebook = self.vectors().detach()
        if self.l2_normalize_lookup:
            return nearest_code(F.normalize(x.detach().float(), dim=-1), F.normalize(codebook.float(), dim=-1))
        return nearest_code(x.detach(), codebook)

    def embed_codes(self, codes: Tensor) -> Tensor:
        """Code vectors for integer ``codes`` of any shape → (*codes.shape, d). Differentiable w.r.t. the
        codebook when ``learning="grad"``, w.r.t. the shared transform when ``learning="transform"``."""
        return F.embedding(codes, self.vectors())

    def replacement_mask(self) -> Tensor:
        """(K,) bool: the codes the dead-code rule re-seeds: EMA usage under the dead-code threshold, or (with
        ``dead_code_patience``) idle for that many consecutive updates."""
        mean_usage = self.cluster_size.sum() / self.codebook_size
        dead = self.cluster_size < self.dead_code_threshold * mean_usage
        if self.dead_code_patience > 0:
            dead |= self.idle_steps >= self.dead_code_patience
        return dead

    def dead_mask(self) -> Tensor:
        """(K,) bool: the codes out of use now (reported as ``dead_codes``): those :meth:`replacement_mask` flags
        and those no frame has reached since they were set (``unused_since_init``: since the k-means
        initialisation or their re-seeding).

        The second part is what makes ``dead_codes`` agree with the windowed ``utilization``: the EMA rule alone
        reads 0 for ~ln(1/threshold)/(1 - decay) steps after k-means initialisation (230 at the defaults),
        however few codes the encoder picks, and, with ``dead_code_interval=1``, a code it does catch is
        re-seeded in the same update, before any statistics are read. Codes unused since they were set are
        only reported; they are re-seeded once the rule flags them."""
        return self.replacement_mask() | self.unused_since_init

    # ------------------------------------------------------------------ learning
    @torch.no_grad()
    def initialize_(self, x: Tensor) -> None:
        """k-means initialisation from (N, d) vectors (rank 0's result is broadcast to every process)."""
        centroids, counts = kmeans(x.float(), self.codebook_size, self.kmeans_iters)
        broadcast_(centroids)
        broadcast_(counts)
        self.embed.data.copy_(centroids)
        if self.learning == "transform":  # the codes are exactly the centroids
            self.transform.data.copy_(torch.eye(self.dim, dtype=self.transform.dtype))
        self.cluster_size.copy_(counts)
        self.embed_sum.copy_(centroids * counts.unsqueeze(-1))
        self.unused_since_init.fill_(True)  # no training frame has reached any code yet
        self.initialized.fill_(True)

    @torch.no_grad()
    def update_(self, x: Tensor, codes: Tensor) -> Tensor:
        """One training step of codebook bookkeeping for (N, d) vectors ``x`` assigned to ``codes`` (N,).

        Updates the EMA usage (both learning modes), the EMA codes (``learning="ema"``) and ``unused_since_init``,
        and re-seeds the codes :meth:`replacement_mask` flags. Sums are all-reduced first, so every process
        applies the same update. Returns the number of codes replaced in this step as a 0-d tensor.

        On an accelerator nothing here waits for the device (no ``.item()``-like reads): the bookkeeping is
        written with masks (see :meth:`_replace_dead_masked_`). On the CPU, where reading a value costs nothing,
        the replacement only samples as many rows as there are dead codes (:meth:`_replace_dead_`).
        """
        x = x.detach().float()
        counts = torch.bincount(codes, minlength=self.codebook_size).float()
        sums = torch.zeros(self.codebook_size, self.dim, device=x.device).index_add_(0, codes, x)
        all_reduce_sum_(counts)
        all_reduce_sum_(sums)
        # k-means init counts frames of the init batch; at the first update, rescale them to this step's frame
        # count so that EMA usage (and the dead-code threshold relative to its mean) is in frames per step from
        # the start. (A factor of exactly 1 otherwise: written without a branch on device values.)
        init_total = self.cluster_size.sum()
        first = (self.steps == 0) & (init_total > 0)
        ratio = torch.where(first, counts.sum() / init_total.clamp_min(1e-30), torch.ones_like(init_total))
        self.cluster_size.mul_(ratio)
        self.embed_sum.mul_(ratio)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        if self.dead_code_patience > 0:
            self.idle_steps.add_(1).masked_fill_(counts > 0, 0)
        # the first update starts the record for a codebook that was not k-means-initialised (a no-op after k-means)
        self.unused_since_init.logical_or_(self.steps == 0).logical_and_(counts == 0)
        if self.learning == "ema":
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.epsilon) / (n + self.codebook_size * self.epsilon) * n
            self.embed.data.copy_(self.embed_sum / smoothed.unsqueeze(-1))
        self.steps += 1
        if (self.dead_code_threshold <= 0 and self.dead_code_patience <= 0) or x.shape[0] == 0:
            return torch.zeros((), dtype=torch.long, device=x.device)
        dead = self.replacement_mask()
        if self.dead_code_interval > 1:
            dead &= self.steps % self.dead_code_interval == 0
        if x.device.type == "cpu":
            return self._replace_dead_(x, dead)
        return self._replace_dead_masked_(x, dead)

    @torch.no_grad()
    def _replace_dead_masked_(self, x: Tensor, dead: Tensor) -> Tensor:
        """Replace the ``dead`` (K,) codes by rows of ``x`` drawn with replacement, without reading any value
        back from the device: K candidates are drawn and kept only where a code is dead."""
        candidates = x[torch.randint(0, x.shape[0], (self.codebook_size,), device=x.device)]
        if is_distributed():
            broadcast_(candidates)
        mean_usage = self.cluster_size.sum() / self.codebook_size
        column = dead.unsqueeze(-1)
        self.embed.data.copy_(torch.where(column, self._base_rows(candidates), self.embed))
        self.cluster_size.copy_(torch.where(dead, mean_usage, self.cluster_size))
        self.embed_sum.copy_(torch.where(column, candidates * mean_usage, self.embed_sum))
        if self.dead_code_patience > 0:
            self.idle_steps.masked_fill_(dead, 0)
        self.unused_since_init.logical_or_(dead)  # a re-seeded code is new: unused until a frame reaches it
        n_dead = dead.sum()
        self.replaced_total += n_dead
        return n_dead

    @torch.no_grad()
    def _replace_dead_(self, x: Tensor, dead: Tensor) -> Tensor:
        """Replace the ``dead`` (K,) codes by distinct rows of ``x`` (when there are enough); reads the number
        of dead codes (free on a CPU)."""
        n_dead = int(dead.sum())  # identical on every rank: cluster_size is all-reduced
        if n_dead == 0:
            return torch.zeros((), dtype=torch.long)
        new_codes = sample_rows(x, n_dead).contiguous()
        if is_distributed():
            broadcast_(new_codes)
        mean_usage = self.cluster_size.sum() / self.codebook_size
        self.embed.data[dead] = self._base_rows(new_codes)
        self.cluster_size[dead] = mean_usage
        self.embed_sum[dead] = new_codes * mean_usage
        if self.dead_code_patience > 0:
            self.idle_steps[dead] = 0
        self.unused_since_init[dead] = True  # a re-seeded code is new: unused until a frame reaches it
        self.replaced_total += n_dead
        return torch.tensor(n_dead)
