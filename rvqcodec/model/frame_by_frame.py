"""The causal frame-rate model one frame at a time: its layers with their weights folded for a single frame, for
real-time streaming (:mod:`rvqcodec.realtime`).

A 20 ms frame of the ``convnext-causal`` model is ~3.4 M multiply-adds. Run through the batch-shaped modules (``(B,
C, F)`` tensors, convolutions, transposes, per-stage code projections) it took 4–6 ms on one CPU thread, most of it
the fixed cost of many small tensor operations (a one-frame depthwise ``conv1d`` alone ~0.1 ms); this way 1.1–1.5 ms
(docs/streaming.md). Here a frame is a ``(C,)`` vector and each layer is a few matrix-vector products on weights
folded once, at construction:

* a causal convolution reads a ``(C_in, k)`` window of its last ``k`` input frames (zeros at the start: the offline
  zero padding), kept as a ring with its weights in matching rotations; the stack's input convolution is one
  matrix-vector product over the flattened window;
* a LayerNorm's affine map is folded into the linear layer after it (``W·diag(γ)``, ``b + W·β``), the ConvNeXt
  layer scale into the block's second linear layer, the decoder's bitrate conditioning into its input LayerNorm;
* each quantizer stage keeps its codes' squared norms and its decoded codes (``project_out`` of every code, ``(K,
  D)``), so a stage is two matrix-vector products, a minimum and a row lookup.

The ConvNeXt stacks (:class:`FrameStack`) run in torch, whose matrix-vector products and elementwise operations are
the faster ones here; the parts made of many tiny operations -- the STFT stem (:class:`FrameStem`), the quantizer
(:class:`FrameQuantizer`) and the inverse-STFT head (:class:`FrameHead`) -- run in numpy, whose per-operation cost
on a few hundred numbers is 2–5× lower (measured: the quantizer's 12 stages 0.20 -> 0.10 ms, the stem 53 -> 18 µs).
Frames go in and out as float32 numpy arrays, on the CPU whatever device the codec is on.

The results equal the batch-shaped modules' up to float rounding (~1e-6 relative; the order of the sums differs, as
it already does between a batch of frames and one frame); ``tests/test_realtime.py`` checks codes and audio against
offline ``Codec.encode``/``decode``. Inference only: the folded weights are copies, taken under ``no_grad``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from rvqcodec.model.convnext import ConvNeXtStack
from rvqcodec.model.spectral import MAGNITUDE_FLOOR, ISTFTHead, STFTFeatures
from rvqcodec.quantize.residual import ResidualVQ


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy, detached: the frame-by-frame weights."""
    return tensor.detach().to(device="cpu", dtype=torch.float32).clone()


def _column_major(weight: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column by column: ``addmv`` with a ConvNeXt-sized matrix (hundreds of rows and
    columns) runs ~25 % faster so on one CPU thread (measured; the small quantizer projections do not gain)."""
    return weight.t().contiguous().t()


def _fold_layer_norm(norm: torch.nn.LayerNorm, linear: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W', b')`` with ``linear(norm(x)) == W'·layer_norm(x) + b'``, ``layer_norm`` without its affine map."""
    return linear.weight * norm.weight[None, :], linear.bias + linear.weight @ norm.bias


class _Window:
    """The last ``k`` input frames of a causal convolution, ``(C, k)``, kept as a ring: frame ``t`` overwrites the
    oldest column (``t mod k``) instead of shifting the others, and the weights are kept in the ``k`` rotations
    that match (:meth:`rotations`). Zeros at the start: the offline zero padding."""

    def __init__(self, channels: int, k: int, like: torch.Tensor, ones: bool = False):
        self.frames = like.new_zeros(channels, k + ones)
        if ones:  # a constant last column: a bias as one more weight column
            self.frames[:, k] = 1.0
        self.k = k
        self.column = -1  # where the newest frame is

    def push(self, x: torch.Tensor) -> int:
        """Write frame ``(C,)`` over the oldest; returns the column it went to (the rotation to use)."""
        self.column = (self.column + 1) % self.k
        self.frames[:, self.column] = x
        return self.column

    def rotations(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``weight`` ``(..., k)`` over the frames in time order (oldest first) -> for each column ``c`` of the
        newest frame, the same weights over the ring's columns: the oldest frame sits in column ``c + 1 (mod k)``.
        ``bias`` ``(...,)``: appended as the weight of the ones column (a window made with ``ones=True``)."""
        rotated = [torch.roll(weight, c + 1, dims=-1) for c in range(self.k)]
        return rotated if bias is None else [torch.cat([w, bias[..., None]], dim=-1) for w in rotated]


class FrameStack:
    """A causal :class:`ConvNeXtStack` (plus the linear layer after it) run one frame at a time, with its state.

    Args:
        stack: a causal stack, in eval mode.
        out: the linear layer applied to the stack's output (``stack.proj_out`` for the encoder; the inverse-STFT
            head's projection for the decoder, whose stack has none); folded with the final LayerNorm.
        film: the ``(scale, shift)`` conditioning of :meth:`ConvNeXtStack.forward` (each ``(dim,)``), or None.

    :meth:`step` maps an input frame ``(in_dim,)`` to ``(out.out_features,)`` (float32 numpy arrays).
    """

    def __init__(self, stack: ConvNeXtStack, out: torch.nn.Linear,
                 film: tuple[torch.Tensor, torch.Tensor] | None = None):
        if not stack.causal:
            raise ValueError("only a causal ConvNeXt stack can run frame by frame (it has no look-ahead)")
        with torch.no_grad():
            conv = stack.proj_in
            self.dim = conv.out_channels
            conv_weight = _cpu(conv.weight)
            self.in_window = _Window(conv.in_channels, conv.kernel_size[0], conv_weight)
            self.in_weights = [_column_major(w.reshape(self.dim, -1))  # (dim, C_in·k) over the flattened ring
                               for w in self.in_window.rotations(conv_weight)]
            self.in_bias = _cpu(conv.bias)
            norm_weight, norm_bias = stack.norm_in.weight, stack.norm_in.bias
            if film is not None:  # (x·γ + β)·(1 + s) + shift
                scale, shift = film
                norm_weight, norm_bias = norm_weight * (1.0 + scale), norm_bias * (1.0 + scale) + shift
            self.norm_in = (_cpu(norm_weight), _cpu(norm_bias))
            self.eps = stack.norm_in.eps
            self.blocks = []
            for block in stack.blocks:
                w1, b1 = _fold_layer_norm(block.norm, block.pwconv1)
                w2, b2 = block.pwconv2.weight, block.pwconv2.bias
                if block.gamma is not None:
                    w2, b2 = block.gamma[:, None] * w2, block.gamma * b2
                window = _Window(self.dim, block.dwconv.kernel_size[0], conv_weight, ones=True)
                self.blocks.append({
                    "window": window,
                    "dw_weights": window.rotations(_cpu(block.dwconv.weight[:, 0, :]), _cpu(block.dwconv.bias)),
                    "w1": _column_major(_cpu(w1)), "b1": _cpu(b1), "w2": _column_major(_cpu(w2)), "b2": _cpu(b2),
                    "eps": block.norm.eps,
                })  # dw_weights: k rotations of (C, k + 1)
            out_weight, out_bias = _fold_layer_norm(stack.norm_out, out)
            self.out_weight, self.out_bias = _column_major(_cpu(out_weight)), _cpu(out_bias)
            self.out_eps = stack.norm_out.eps

    def step(self, x: np.ndarray) -> np.ndarray:
        """One frame ``(in_dim,)`` -> ``(out_dim,)``; advances the convolution windows."""
        column = self.in_window.push(torch.from_numpy(x))
        h = torch.addmv(self.in_bias, self.in_weights[column], self.in_window.frames.view(-1))
        h = F.layer_norm(h, (self.dim,), *self.norm_in, self.eps)
        for block in self.blocks:
            column = block["window"].push(h)
            y = torch.linalg.vecdot(block["window"].frames, block["dw_weights"][column])
            y = F.layer_norm(y, (self.dim,), eps=block["eps"])
            y = F.gelu(torch.addmv(block["b1"], block["w1"], y), approximate="tanh")
            h = torch.addmv(h + block["b2"], block["w2"], y)
        h = F.layer_norm(h, (self.dim,), eps=self.out_eps)
        return torch.addmv(self.out_bias, self.out_weight, h).numpy()


def decoded_code_tables(quantizer: ResidualVQ, n_q: int | None = None) -> np.ndarray:
    """``(n_q, K, D)`` float32: every code of each of the first ``n_q`` stages (all by default) decoded into the
    latent space (``project_out`` of the code vector). A frame's quantized latent is the sum of one row per stage."""
    with torch.no_grad():
        codes = torch.arange(quantizer.codebook_size, device=quantizer.layers[0].codebook.embed.device)[None]
        return _cpu(torch.stack([layer.decode(codes)[0].T for layer in quantizer.layers[:n_q]])).numpy()


class FrameQuantizer:
    """The first ``n_q`` stages of a :class:`ResidualVQ` on one latent frame: :meth:`encode` ``(D,)`` -> ``(n_q,)``
    int64 codes, the nearest code of each stage's residual as :meth:`ResidualVQ.encode` chooses it (squared L2 in
    the stage's code space; cosine when the codebook looks codes up L2-normalised)."""

    def __init__(self, quantizer: ResidualVQ, n_q: int):
        self.stages = []
        with torch.no_grad():
            for layer, decoded in zip(quantizer.layers[:n_q], decoded_code_tables(quantizer, n_q)):
                codebook, project_in = layer.codebook, layer.project_in
                factorised = isinstance(project_in, torch.nn.Linear)
                vectors = codebook.vectors().float()
                if codebook.l2_normalize_lookup:  # nearest unit code to e/|e| = nearest to e among unit codes
                    vectors = F.normalize(vectors, dim=-1)
                self.stages.append((
                    _cpu(project_in.weight).numpy() if factorised else None,  # (d, D)
                    _cpu(project_in.bias).numpy() if factorised else None,  # (d,)
                    _cpu(-2.0 * vectors).numpy(),  # (K, d): -2·codes, so a distance is one product and a sum
                    _cpu(vectors.pow(2).sum(-1)).numpy(),  # (K,) squared norms
                    decoded,  # (K, D)
                ))

    def encode(self, latent: np.ndarray) -> np.ndarray:
        """``(D,)`` float32 -> ``(n_q,)`` int64."""
        codes = np.empty(len(self.stages), dtype=np.int64)
        residual = np.array(latent, dtype=np.float32)  # a copy, updated in place
        for stage, (w_in, b_in, minus_2_codes, code_sq, decoded) in enumerate(self.stages):
            e = residual if w_in is None else w_in @ residual + b_in
            code = int(np.argmin(code_sq + minus_2_codes @ e))  # the first minimum
            residual -= decoded[code]
            codes[stage] = code
        return codes


class FrameStem:
    """The causal :class:`STFTFeatures` on one frame: :meth:`features` maps the ``n_fft`` samples that end with a
    frame (float32 numpy) to its ``(3·n_bins,)`` features, as ``STFTFeatures.from_frames`` does."""

    def __init__(self, stem: STFTFeatures):
        self.window = _cpu(stem.window).numpy()
        self.compress = stem.compress

    def features(self, samples: np.ndarray) -> np.ndarray:
        spec = np.fft.rfft(samples * self.window)
        mag = np.abs(spec)
        scale = (mag + MAGNITUDE_FLOOR) ** (self.compress - 1.0)  # |X|^0.3 / |X|, finite at 0
        features = np.concatenate([np.log(mag + MAGNITUDE_FLOOR), spec.real * scale, spec.imag * scale])
        return features.astype(np.float32)


class FrameHead:
    """The :class:`ISTFTHead` after its projection, on one frame: :meth:`windowed` maps the output of ``head.proj``
    ``(2·n_bins,)`` (log-magnitudes, then phases) to the frame's windowed inverse FFT ``(n_fft,)``, with the head's
    postfilter (as set now) applied to the log-magnitudes, which the caller overlap-adds (what
    ``synthesis_frames(head.spectrum(x), window)`` gives offline, one frame at a time)."""

    def __init__(self, head: ISTFTHead):
        self.head = head
        self.window = _cpu(head.window).numpy()
        self.n_fft, self.n_bins, self.max_log_mag = head.n_fft, head.n_bins, head.max_log_mag

    def windowed(self, projected: np.ndarray) -> np.ndarray:
        log_mag = projected[:self.n_bins]
        if self.head.postfilter:
            log_mag = self.head.postfiltered(torch.from_numpy(log_mag).cpu()).numpy()
        magnitude = np.exp(np.minimum(log_mag, self.max_log_mag))
        phase = projected[self.n_bins:]
        spec = np.empty(self.n_bins, dtype=np.complex64)
        spec.real, spec.imag = magnitude * np.cos(phase), magnitude * np.sin(phase)
        return np.fft.irfft(spec, n=self.n_fft).astype(np.float32) * self.window
