"""The training loop: a codec (generator) and its discriminators trained through HuggingFace Accelerate.

:class:`Trainer` builds a run from a :class:`rvqcodec.training.config.TrainConfig` and trains it; the command that
starts it is ``rvqcodec train CONFIG [key=value ...]`` (:mod:`rvqcodec.commands.train`), also run as
``python -m rvqcodec.training CONFIG ...`` or, on several GPUs / nodes, ``accelerate launch --multi_gpu -m
rvqcodec.training CONFIG ...``. The same code runs on a CPU.

The trainer only orchestrates; each concept is a module of plain functions that take what they act on:

* :mod:`.setup`: the schedule, the accelerator, the models, losses and optimisers (:class:`~.setup.TrainingModels`),
  the k-means initialisation of the codebooks;
* :mod:`.sampling`: the data order, a pure function of ``(train.seed, step)``, so a run resumed at step ``s`` sees
  exactly the batches an uninterrupted run would;
* :mod:`.step`: one optimiser step of the generator and the discriminators (with the discriminators' warm-up);
  a non-finite loss or gradient skips the step, and after ``train.max_bad_steps`` consecutive skips training
  stops with :class:`~.step.TrainingDiverged` (no checkpoint is written from a bad state);
* :mod:`.evaluation`: validation scores and example audio;
* :mod:`.checkpoints`: the training state (:class:`~.checkpoints.TrainProgress`), its checkpoints and exact resume
  (``train.resume=true``: bit-identical on the same hardware and process count), ``train.init_from``;
* :mod:`.train_log`: ``config.yaml``, ``log.jsonl`` and TensorBoard records. What a run writes:
  :mod:`rvqcodec.training.run_folder`.
"""
from __future__ import annotations

import math
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from rvqcodec.training.checkpoints import TrainProgress, init_from, latest_checkpoint, resume, save_checkpoint
from rvqcodec.training.config import TrainConfig
from rvqcodec.training.data_files import data_files
from rvqcodec.training.evaluation import ValidationClips, validate
from rvqcodec.training.run_folder import LOG_NAME, JsonlLog, check_new_run, device_label
from rvqcodec.training.sampling import train_batches
from rvqcodec.training.setup import build_models, codebooks_ready, initialize_codebooks
from rvqcodec.training.step import StepResult, TrainingDiverged, train_step
from rvqcodec.training.train_log import log_train, log_valid, start_logging


class Trainer:
    """Builds everything a run needs from a :class:`TrainConfig` and trains it with :meth:`fit`.

    With ``train.resume=true`` the constructor already loads the latest checkpoint of ``train.run_dir``.
    Raises ``ValueError`` / ``FileNotFoundError`` with one-line messages for configuration and data mistakes
    (including a checkpoint that does not match the configured model).
    """

    def __init__(self, cfg: TrainConfig, show_progress: bool = True):
        from accelerate.utils import set_seed

        from rvqcodec.data.datasets import AudioFileListDataset

        self.cfg = cfg
        self.show_progress = show_progress
        self.run_dir = Path(cfg.train.run_dir)
        check_new_run(self.run_dir, cfg.train.resume)
        set_seed(cfg.train.seed)

        # LibriSpeech subsets and/or folders and a list file of any audio (rvqcodec.training.data_files)
        sr = cfg.codec_config.sample_rate
        self.data_files = data_files(cfg.data)
        self.train_set = AudioFileListDataset(self.data_files.train, segment_seconds=cfg.data.segment_seconds,
                                              sample_rate=sr, seed=cfg.train.seed)
        self.valid_set = AudioFileListDataset(self.data_files.valid, segment_seconds=None, sample_rate=sr,
                                              seed=cfg.train.seed)
        self.validation = ValidationClips(self.valid_set, cfg.data.max_valid_files, cfg.data.max_valid_seconds, sr)

        self.models = build_models(cfg)
        self.accelerator = acc = self.models.accelerator
        self.is_main = acc.is_main_process
        self.augment = None
        if cfg.augment.prob > 0:
            from rvqcodec.data.augment import Augmenter

            self.augment = Augmenter(cfg.augment, sr, acc.device)
        self.clips = None
        self._print(f"{self.data_files.describe()}; {self.train_set.total_seconds / 60:.1f} min of training audio")
        if cfg.data.preload:
            from rvqcodec.data.clips import PreloadedClips

            self.clips = PreloadedClips(self.train_set, self.train_set.segment_samples, acc.device,
                                        seed=cfg.train.seed, progress=self.is_main and show_progress)

        self.progress = TrainProgress()
        self.log = JsonlLog(self.run_dir / LOG_NAME, enabled=self.is_main)
        self._hparams_logged = False
        self._quantizing = False  # set once the codebooks are known to be initialised (checked in fit)
        self._device_label = device_label(acc.device)
        self._audio_seconds_per_step = (cfg.data.batch_size * cfg.train.grad_accum * acc.num_processes
                                        * cfg.data.segment_seconds)
        if cfg.train.init_from and latest_checkpoint(self.run_dir) is None:
            self.progress.lineage = init_from(Path(cfg.train.init_from), cfg.codec_config, self.models, self._print)
        if cfg.train.resume:
            self.progress = resume(self.run_dir, cfg.codec_config, self.models, self._print) or self.progress

    # ------------------------------------------------------------------------------------ views
    @property
    def codec_module(self):
        """The bare :class:`Codec` (not wrapped for distributed training)."""
        return self.models.codec_module

    @property
    def disc_module(self):
        return self.models.disc_module

    @property
    def sched_g(self):
        return self.models.sched_g

    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def bad_total(self) -> int:
        return self.progress.bad_total

    @property
    def lineage(self):
        return self.progress.lineage

    def _codebooks_ready(self) -> bool:
        return codebooks_ready(self.codec_module)

    def _print(self, text: str) -> None:
        if self.is_main:
            print(text, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------------------------ the loop
    def train_step(self, micro_batches: list) -> StepResult:
        """One optimiser step (:func:`rvqcodec.training.step.train_step`), counting skipped steps:
        :class:`TrainingDiverged` after ``train.max_bad_steps`` in a row."""
        result = train_step(self.models, self.cfg, self.progress.step, micro_batches)
        progress = self.progress
        if result.skipped is None:
            progress.bad_streak = 0
            return result
        progress.bad_streak += 1
        progress.bad_total += 1
        self._print(f"step {progress.step + 1}: non-finite {result.skipped}, update skipped "
                    f"({progress.bad_streak} in a row, {progress.bad_total} in total)")
        if progress.bad_streak >= self.cfg.train.max_bad_steps:
            raise TrainingDiverged(
                f"training stopped at step {progress.step + 1}: {progress.bad_streak} consecutive steps had a "
                f"non-finite loss or gradient (train.max_bad_steps={self.cfg.train.max_bad_steps}); last good "
                f"checkpoint: {latest_checkpoint(self.run_dir) or 'none'}")
        return result

    def save_checkpoint(self, best: bool = False) -> Path | None:
        """Write the training state (:func:`rvqcodec.training.checkpoints.save_checkpoint`). Collective."""
        return save_checkpoint(self.run_dir, self.cfg, self.models, self.progress, best=best)

    def validate(self) -> dict[str, float]:
        """The validation record now (:func:`rvqcodec.training.evaluation.validate`). Collective."""
        return validate(self.codec_module, self.accelerator, self.validation, self.cfg, self.step, self.run_dir)

    def _out_of_time(self, started: float, budget: float | None) -> bool:
        """Whether ``train.max_minutes`` has run out; every process gets the main process's answer."""
        import torch

        if budget is None:
            return False
        if self.accelerator.num_processes == 1:  # no agreement needed: no device round trip
            return time.perf_counter() - started > budget
        flag = torch.tensor(float(time.perf_counter() - started > budget), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item() > 0)

    def fit(self, stop_after_step: int | None = None) -> dict[str, Any]:
        """Train to ``train.steps`` (or stop early after ``stop_after_step``, as an interruption would).

        May be called again to continue in the same process (``fit(stop_after_step=100)``, then ``fit()``): the
        result is bit-identical to a single call.

        Returns ``{"step", "last_train", "last_valid", "best_valid_mel", "skipped"}``.
        """
        from tqdm.auto import tqdm

        cfg, acc, progress = self.cfg, self.accelerator, self.progress
        if start_logging(cfg, self.run_dir, self.log, progress.step, acc, not self._hparams_logged, self._print):
            self._hparams_logged = True  # once per Trainer, however often fit() is called
        last_train: dict[str, float] = {}
        last_valid: dict[str, float] = {}
        end = cfg.train.steps if stop_after_step is None else min(cfg.train.steps, stop_after_step)
        batches = train_batches(self.train_set, cfg.data.batch_size, cfg.train.seed,
                                progress.step * cfg.train.grad_accum, acc.device, rank=acc.process_index,
                                world_size=acc.num_processes, num_workers=cfg.data.num_workers, clips=self.clips,
                                augment=self.augment)
        bar = tqdm(total=cfg.train.steps, initial=progress.step, disable=not (self.is_main and self.show_progress),
                   dynamic_ncols=True, desc="train")
        budget = None if cfg.train.max_minutes is None else cfg.train.max_minutes * 60.0
        fit_started = time.perf_counter()
        try:
            while progress.step < end:
                if progress.step >= cfg.train.ae_warmup_steps and not self._quantizing:
                    report = initialize_codebooks(self.codec_module, self.train_set, cfg.train.kmeans_init_seconds,
                                                  cfg.data.segment_seconds, acc.device)
                    if report:
                        self._print(report)
                    self._quantizing = True
                started = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.train.grad_accum)]
                loaded = time.perf_counter()
                result = self.train_step(micro)
                self.models.step_schedulers()
                progress.step += 1
                window = progress.window
                for key, value in result.metrics.items():
                    window[key].append(value)
                seconds = time.perf_counter() - started
                audio = self._audio_seconds_per_step
                progress.lineage.add(audio, seconds, self._device_label)
                window["time/data_seconds"].append(loaded - started)
                window["time/step_seconds"].append(seconds)
                window["throughput/audio_seconds_per_second"].append(audio / seconds)
                bar.update(1)
                final = (progress.step in (cfg.train.steps, cfg.train.stop_at_step)
                         or self._out_of_time(fit_started, budget))
                if progress.step % cfg.train.log_every == 0 or final:
                    last_train = log_train(window, self.models, progress.bad_total, self.log, progress.step)
                    progress.window = defaultdict(list)
                    bar.set_postfix(loss=f"{last_train.get('loss/generator', math.nan):.3f}",
                                    mel=f"{last_train.get('loss/mel', math.nan):.3f}",
                                    gnorm=f"{last_train.get('grad_norm/generator', math.nan):.2f}",
                                    n_q=f"{last_train.get('n_q', math.nan):.1f}", refresh=False)
                if progress.step % cfg.train.valid_every == 0 or final:
                    last_valid = log_valid(self.validate(), progress.lineage, acc, self.log, progress.step)
                    if self.is_main:
                        bar.write(f"step {progress.step} validation: " + ", ".join(
                            f"{k.removeprefix('valid/')}={v:.3f}" for k, v in last_valid.items()), file=sys.stderr)
                    if last_valid["valid/mel"] < progress.best_valid_mel:
                        progress.best_valid_mel = last_valid["valid/mel"]
                        self.save_checkpoint(best=True)
                if progress.step % cfg.train.ckpt_every == 0 or final:
                    self.save_checkpoint()
                if final:
                    break
        finally:
            batches.close()  # stops DataLoader workers
            bar.close()
            acc.end_training()  # flushes and closes the trackers
            acc.trackers = []  # a later fit() starts fresh ones (closed writers would reopen)
        return {"step": progress.step, "last_train": last_train, "last_valid": last_valid,
                "best_valid_mel": progress.best_valid_mel, "skipped": progress.bad_total}
