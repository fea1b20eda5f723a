"""How strong a formant postfilter, and of which form: listener models, ViSQOL and PESQ-WB of one model's decodes.

    python benchmarks/postfilter_sweep.py                                   # shipped model, all of dev-clean
    python benchmarks/postfilter_sweep.py --model runs/x/codec.pt --strengths 0,0.2 --bitrates 6 --out /tmp/s
    python benchmarks/postfilter_sweep.py --strengths 0,0.4,envelope:0.2,peaks:0.2   # other forms beside it

Each file (``--data``, searched recursively for .flac/.wav) is encoded once per bitrate and decoded once per
setting (the codes do not depend on the postfilter), then scored against the original: PESQ-WB, ViSQOL v3 speech,
DistillMOS and DNSMOS P.808 / P.835 OVRL (``rvqcodec.perceptual``; needs the ``perceptual`` extra). A setting is a
strength of the library's postfilter (:mod:`rvqcodec.model.postfilter`: the envelope's valleys deepened), or
``FORM:S`` for one of the forms it was chosen against, each on the same liftered envelope ``E`` of the head's
log-magnitudes ``m``: ``envelope`` (``m + S·E``, the first shipped form: peaks raised and valleys deepened) and
``peaks`` (``m + S·max(E, 0)``). Means over the files, or with ``--macro-by-folder`` the mean of each top-level
folder's mean (as ``quality.py``), each folder's ViSQOL beside it.
Writes ``postfilter_sweep.json`` and ``postfilter_sweep.md`` into ``--out``
(default ``benchmarks/results/postfilter-sweep``). One thread; about 80 s per strength and bitrate on dev-clean.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, shown_path  # noqa: E402
from rvqcodec import perceptual  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.data.datasets import find_audio_files  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.metrics import pesq_wb  # noqa: E402
from rvqcodec.model.postfilter import check_strength, envelope_operator  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

METRICS = ("pesq_wb", "visqol", "distillmos", "dnsmos_p808", "dnsmos_ovrl")
LIBRARY_FORM = "valleys"
OTHER_FORMS = {"envelope": lambda log_mag, envelope, s: log_mag + s * envelope,
               "peaks": lambda log_mag, envelope, s: log_mag + s * envelope.clamp(min=0.0)}


def parse_setting(token: str) -> tuple[str, float]:
    """``"0.4"`` -> ``("valleys", 0.4)``, ``"envelope:0.2"`` -> ``("envelope", 0.2)``; ValueError otherwise."""
    form, _, strength = token.strip().rpartition(":")
    form = form or LIBRARY_FORM
    if form != LIBRARY_FORM and form not in OTHER_FORMS:
        raise ValueError(f"unknown postfilter form {form!r} (one of {LIBRARY_FORM}, {', '.join(OTHER_FORMS)})")
    return form, check_strength(strength)


def set_form(codec, form: str, strength: float) -> None:
    """Make ``codec`` decode with ``form`` at ``strength`` (another form: the head's ``postfiltered`` replaced)."""
    head = codec.decoder.head
    head.__dict__.pop("postfiltered", None)  # back to the library's method
    codec.postfilter = strength
    if form != LIBRARY_FORM and strength:
        operator = envelope_operator(head.n_bins).float()
        head.postfiltered = lambda log_mag: OTHER_FORMS[form](log_mag, log_mag @ operator, strength)


def score_file(codec, x: torch.Tensor, bitrates: list[float], settings: list[tuple[str, float]], scorer) -> dict:
    """``{(kbps, form, strength): {metric: value}}`` for one signal ``x`` (T,) at the codec's rate."""
    out = {}
    sr = codec.sample_rate
    with torch.inference_mode():
        for kbps in bitrates:
            codes = codec.encode(x.view(1, 1, -1), codec.n_q_for_bitrate(kbps))
            for form, strength in settings:
                set_form(codec, form, strength)
                y = codec.decode(codes)[0, 0, :x.numel()].numpy()
                listener = scorer.non_intrusive(y, sr)
                out[(kbps, form, strength)] = {"pesq_wb": pesq_wb(x.numpy(), y, sr),
                                               "visqol": scorer.visqol(x.numpy(), y, sr), **listener}
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint(args.model)
    codec = load_codec(checkpoint).eval()
    own = codec.postfilter
    bitrates = [float(b) for b in args.bitrates.split(",")]
    settings = list(dict.fromkeys((LIBRARY_FORM, 0.0) if s == 0 else (f, s)
                                  for f, s in map(parse_setting, args.strengths.split(","))))
    scorer = perceptual.get_scorer()
    files = find_audio_files(args.data, (".flac", ".wav"))
    groups: dict[str, list[dict]] = {}
    for i, path in enumerate(files):
        x = read_audio(path, target_sr=codec.sample_rate).samples[0]
        group = path.relative_to(args.data).parts[0] if args.macro_by_folder else "all"
        groups.setdefault(group, []).append(score_file(codec, x, bitrates, settings, scorer))
        print(f"[{i + 1}/{len(files)}] {path.name}", file=sys.stderr)
    rows = []
    for kbps in bitrates:
        for form, strength in settings:
            key = (kbps, form, strength)
            by_group = {g: {m: float(np.nanmean([f[key][m] for f in scored])) for m in METRICS}
                        for g, scored in groups.items()}
            means = {m: float(np.mean([v[m] for v in by_group.values()])) for m in METRICS}
            rows.append({"kbps": kbps, "form": form, "strength": strength, **means,
                         "visqol_by_folder": {g: v["visqol"] for g, v in by_group.items()}})
    return {"model": shown_path(checkpoint), "model_id": codec.model_id, "model_postfilter": own,
            "data": shown_path(args.data), "files": len(files),
            "macro_by_folder": sorted(groups) if args.macro_by_folder else None, "rows": rows}


def markdown(result: dict) -> str:
    average = "mean of each top-level folder's mean" if result["macro_by_folder"] else "mean over the files"
    lines = [f"# Formant postfilter strength (model {result['model_id']}, its own strength "
             f"{result['model_postfilter']:g})", "",
             f"`python benchmarks/postfilter_sweep.py`: {result['files']} files of `{result['data']}`, {average}.", "",
             "Form: `valleys` is the library's postfilter (the envelope's valleys deepened); `envelope` scales the whole "
             "envelope (peaks too), `peaks` raises the peaks only (`--help`).", ""]
    folders = result["macro_by_folder"] or []
    lines += ["| kbps | form | strength | PESQ-WB | ViSQOL | DistillMOS | DNSMOS P.808 | DNSMOS OVRL |"
              + "".join(f" ViSQOL {g} |" for g in folders),
              "|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(folders)]
    lines += [f"| {r['kbps']:g} | {r['form'] if r['strength'] else '–'} | {r['strength']:g} | "
              + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |"
              + "".join(f" {r['visqol_by_folder'][g]:.2f} |" for g in folders) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean", help="folder of speech files")
    p.add_argument("--bitrates", default="1.5,3,6", help="kbps, comma-separated (default: 1.5,3,6)")
    p.add_argument("--strengths", default="0,0.2,0.3,0.4,0.5",
                   help="postfilter strengths, comma-separated; FORM:S for another form (envelope, peaks; see above) "
                        "(default: 0,0.2,0.3,0.4,0.5)")
    p.add_argument("--macro-by-folder", action="store_true", help="average each top-level folder first")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "postfilter-sweep")
    args = p.parse_args(argv)
    if not perceptual.available():
        p.error('needs the perceptual extra: pip install -e ".[perceptual]"')
    try:
        for token in args.strengths.split(","):
            parse_setting(token)
    except ValueError as exc:
        p.error(f"--strengths: {exc}")
    result = run(args)
    atomic_write_json(args.out / "postfilter_sweep.json", result, parents=True)
    atomic_write_text(args.out / "postfilter_sweep.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
