"""The held-out evaluation of an ablation run's codec: per-stage codebook statistics over the whole set, mel
distance, multi-resolution STFT distance, SI-SDR and PESQ-WB with all stages, and PESQ-WB / mel distance with the
first ``n`` stages (bitrate scalability).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any


_EVAL_ITEMS: dict[tuple, list[tuple[str, Any]]] = {}


def evaluation_items(root: str, subset: str, sample_rate: int, max_files: int | None,
                     max_seconds: float | None) -> list[tuple[str, Any]]:
    """``[(utterance id, (1, T) float32 tensor), ...]``: held-out files sorted by path, gain-normalised as in
    training, cut to ``max_seconds``. Cached per process."""
    from rvqcodec.data.datasets import LibriSpeechDataset

    key = (str(root), subset, sample_rate, max_files, max_seconds)
    if key not in _EVAL_ITEMS:
        dataset = LibriSpeechDataset(root, [subset], segment_seconds=None, sample_rate=sample_rate)
        count = len(dataset) if max_files is None else min(len(dataset), max_files)
        limit = None if max_seconds is None else int(round(max_seconds * sample_rate))
        items = []
        for i in range(count):
            wav = dataset[i].float().reshape(1, -1)
            items.append((Path(dataset.files[i]).stem, wav if limit is None else wav[:, :limit]))
        _EVAL_ITEMS[key] = items
    return _EVAL_ITEMS[key]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def evaluate_codec(codec, items: list[tuple[str, Any]], n_q_list: list[int], pesq: bool = True) -> dict[str, Any]:
    """Score ``codec`` (eval mode) on ``items`` (see :func:`evaluation_items`).

    Returns a JSON-ready dict::

        {"files", "seconds", "frames", "full_n_q", "n_q_list",
         "full": {"mel", "mrstft", "si_sdr", "pesq_wb"},            # mean over files, all stages
         "by_n_q": {"<n>": {"mel", "pesq_wb"}},                      # first n stages
         "stages": [CodebookStats summary of stage k over the whole set, ...],
         "latent_snr_db": 10·log10(E‖x‖² / E‖x − Σq‖²) after all stages,
         "nonfinite_files": files whose full-bitrate decode was not finite}

    Metrics: :func:`rvqcodec.metrics.mel_distance`, :func:`~rvqcodec.metrics.si_sdr`,
    :func:`~rvqcodec.metrics.pesq_wb` (NaN files are left out of the mean), multi-resolution STFT distance =
    :class:`rvqcodec.losses.MultiResolutionSTFTLoss` (spectral convergence + log-magnitude, auraloss).
    """
    import numpy as np
    import torch

    from rvqcodec.losses import MultiResolutionSTFTLoss
    from rvqcodec.metrics import mel_distance, pesq_wb, si_sdr

    codec.eval()
    device = next(codec.parameters()).device
    sr = codec.sample_rate
    full_n_q = codec.max_n_q
    n_q_list = sorted({int(n) for n in n_q_list if 1 <= int(n) <= full_n_q})
    mrstft = MultiResolutionSTFTLoss()
    quantizer = codec.quantizer
    full: dict[str, list[float]] = {"mel": [], "mrstft": [], "si_sdr": [], "pesq_wb": []}
    by_n_q: dict[int, dict[str, list[float]]] = {n: {"mel": [], "pesq_wb": []} for n in n_q_list}
    seconds, nonfinite = 0.0, 0
    was_recording = quantizer.record_eval_stats
    quantizer.record_eval_stats = True
    quantizer.reset_stats()
    try:
        with torch.no_grad():
            for _, wav in items:
                x = wav.unsqueeze(0).to(device)  # (1, 1, T)
                length = x.shape[-1]
                seconds += length / sr
                pad = (-length) % codec.hop_length
                latent = codec.encoder(torch.nn.functional.pad(x, (0, pad)))
                codes = quantizer(latent).codes  # all stages (eval mode); accumulates the per-stage statistics
                reference = wav[0].numpy().astype(np.float64)

                def decode(n: int) -> np.ndarray:
                    return codec.decode(codes[:, :n])[..., :length].float().cpu()[0, 0].numpy().astype(np.float64)

                estimate = decode(full_n_q)
                if not np.isfinite(estimate).all():
                    nonfinite += 1
                    for values in full.values():
                        values.append(math.nan)
                else:
                    full["mel"].append(mel_distance(reference, estimate, sr))
                    full["si_sdr"].append(si_sdr(reference, estimate))
                    full["pesq_wb"].append(pesq_wb(reference, estimate, sr) if pesq else math.nan)
                    try:
                        est_t = torch.from_numpy(estimate).float().view(1, 1, -1)
                        ref_t = torch.from_numpy(reference).float().view(1, 1, -1)
                        full["mrstft"].append(float(mrstft(est_t, ref_t)))
                    except ValueError:  # file shorter than half the largest FFT
                        full["mrstft"].append(math.nan)
                for n in n_q_list:
                    if n == full_n_q:  # same decode as above
                        by_n_q[n]["mel"].append(full["mel"][-1])
                        by_n_q[n]["pesq_wb"].append(full["pesq_wb"][-1])
                        continue
                    partial = decode(n)
                    ok = bool(np.isfinite(partial).all())
                    by_n_q[n]["mel"].append(mel_distance(reference, partial, sr) if ok else math.nan)
                    by_n_q[n]["pesq_wb"].append(pesq_wb(reference, partial, sr) if ok and pesq else math.nan)
        stages = quantizer.stage_stats(sync=False)
    finally:
        quantizer.record_eval_stats = was_recording
        quantizer.reset_stats()
    rel = [s["rel_qe"] for s in stages]
    if all(math.isfinite(r) for r in rel):
        energy_left = math.prod(rel)
        snr = -10.0 * math.log10(energy_left) if energy_left > 0 else math.inf
    else:
        snr = math.nan
    return {
        "files": len(items),
        "seconds": seconds,
        "frames": stages[0]["frames"] if stages else 0.0,
        "full_n_q": full_n_q,
        "n_q_list": n_q_list,
        "full": {k: _nanmean(v) for k, v in full.items()},
        "by_n_q": {str(n): {k: _nanmean(v) for k, v in d.items()} for n, d in by_n_q.items()},
        "stages": stages,
        "latent_snr_db": snr,
        "nonfinite_files": nonfinite,
    }
