"""Validation during training: mel distance, SI-SDR and (``train.valid_pesq``) PESQ-WB of the held-out files at
every ``train.valid_bitrates`` (the unquantized reconstruction during the autoencoder warm-up), and example audio
in ``samples/step_XXXXXXX/``. The record's ``valid/mel`` (mean over the bitrates) chooses the best checkpoint.
"""
from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rvqcodec.training.checkpoints import preserved_rng
from rvqcodec.training.config import TrainConfig
from rvqcodec.training.sampling import as_clip


class ValidationClips:
    """The held-out files as validation scores them: at most ``max_files``, each cut to ``max_seconds`` (None:
    whole), named by their file name (made distinct). Read once, when first needed."""

    def __init__(self, valid_set, max_files: int, max_seconds: float | None, sample_rate: int):
        self.valid_set = valid_set
        self.max_files = max_files
        self.max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
        self._items: list[tuple[str, torch.Tensor]] | None = None

    def items(self) -> list[tuple[str, torch.Tensor]]:
        if self._items is None:
            items = []
            names: set[str] = set()
            for i in range(min(len(self.valid_set), self.max_files)):
                wav = as_clip(self.valid_set[i])
                if self.max_samples is not None:
                    wav = wav[..., :self.max_samples]
                name = stem = Path(self.valid_set.files[i]).stem
                copy = 1
                while name in names:  # two files of one name in different folders: distinct example audio
                    copy += 1
                    name = f"{stem}-{copy}"
                names.add(name)
                items.append((name, wav))
            self._items = items
        return self._items


@torch.no_grad()
def validate(codec, accelerator, clips: ValidationClips, cfg: TrainConfig, step: int,
             run_dir: Path) -> dict[str, float]:
    """The validation record of ``codec`` (the bare module) after ``step`` steps, with example audio. Runs on the
    main process, without disturbing the training RNG streams; the result is shared with every process
    (collective)."""
    from accelerate.utils import broadcast_object_list

    results: list[Any] = [None]
    if accelerator.is_main_process:
        with preserved_rng():
            results[0] = _validate_main(codec, accelerator.device, clips, cfg, step, run_dir)
    broadcast_object_list(results, from_process=0)
    return results[0]


def _validate_main(codec, device: torch.device, clips: ValidationClips, cfg: TrainConfig, step: int,
                   run_dir: Path) -> dict[str, float]:
    from rvqcodec.data.audio_io import write_audio
    from rvqcodec.metrics import mel_distance, pesq_wb, si_sdr

    was_training = codec.training
    codec.eval()
    sr = codec.sample_rate
    sums: dict[str, list[float]] = defaultdict(list)
    sample_dir = run_dir / "samples" / f"step_{step:07d}"
    warmup = cfg.train.ae_warmup_steps
    warming_up = 0 < warmup and step <= warmup  # every step so far ran unquantized
    bitrates = [None] if warming_up else cfg.train.valid_bitrates
    for index, (utt, wav) in enumerate(clips.items()):
        x = wav.unsqueeze(0).to(device)
        write_example = index < cfg.train.n_samples
        if write_example:
            sample_dir.mkdir(parents=True, exist_ok=True)
            write_audio(sample_dir / f"{utt}_ref.wav", wav, sr, overwrite=True)
        reference = wav[0].numpy()
        for kbps in bitrates:
            if kbps is None:  # autoencoder warm-up: the unquantized reconstruction
                y = codec(x, quantize=False).audio.float().cpu()[0]
            else:
                y = codec.decode(codec.encode(x, n_q=codec.n_q_for_bitrate(kbps)))[..., : x.shape[-1]].float().cpu()[0]
            estimate = y[0].numpy()
            tag = "valid/ae" if kbps is None else f"valid/{kbps:g}kbps"
            finite = bool(np.isfinite(estimate).all())  # a diverged model: NaN scores, not a crash
            sums[f"{tag}/mel"].append(mel_distance(reference, estimate, sr) if finite else math.nan)
            sums[f"{tag}/si_sdr"].append(si_sdr(reference, estimate) if finite else math.nan)
            if cfg.train.valid_pesq:
                sums[f"{tag}/pesq_wb"].append(pesq_wb(reference, estimate, sr) if finite else math.nan)
            if write_example and finite:
                name = "ae" if kbps is None else f"{kbps:g}kbps"
                write_audio(sample_dir / f"{utt}_{name}.wav", y, sr, overwrite=True)
    codec.train(was_training)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN metric (e.g. PESQ on silence)
        record = {k: float(np.nanmean(v)) for k, v in sums.items()}
    mels = [record[f"valid/{kbps:g}kbps/mel"] for kbps in cfg.train.valid_bitrates
            if f"valid/{kbps:g}kbps/mel" in record]
    # During the warm-up there is no codec yet: valid/mel stays NaN, so no "best" checkpoint is chosen.
    record["valid/mel"] = float(np.mean(mels)) if mels else float("nan")
    return record
