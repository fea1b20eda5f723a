"""How strong a formant postfilter: listener models, ViSQOL and PESQ-WB of one model's decodes at several strengths.

    python benchmarks/postfilter_sweep.py                                   # shipped model, all of dev-clean
    python benchmarks/postfilter_sweep.py --model runs/x/codec.pt --strengths 0,0.2 --bitrates 6 --out /tmp/s

Each file (``--data``, searched recursively for .flac/.wav) is encoded once per bitrate and decoded once per
postfilter strength (:mod:`rvqcodec.model.postfilter`; the codes do not depend on it), then scored against the
original: PESQ-WB, ViSQOL v3 speech, DistillMOS and DNSMOS P.808 / P.835 OVRL (``rvqcodec.perceptual``; needs the
``perceptual`` extra). Means
over the files, or with ``--macro-by-folder`` the mean of each top-level folder's mean (as ``quality.py``).
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
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.metrics import pesq_wb  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402

METRICS = ("pesq_wb", "visqol", "distillmos", "dnsmos_p808", "dnsmos_ovrl")


def score_file(codec, x: torch.Tensor, bitrates: list[float], strengths: list[float], scorer) -> dict:
    """``{(kbps, strength): {metric: value}}`` for one signal ``x`` (T,) at the codec's rate."""
    out = {}
    sr = codec.sample_rate
    with torch.inference_mode():
        for kbps in bitrates:
            codes = codec.encode(x.view(1, 1, -1), codec.n_q_for_bitrate(kbps))
            for strength in strengths:
                codec.postfilter = strength
                y = codec.decode(codes)[0, 0, :x.numel()].numpy()
                listener = scorer.non_intrusive(y, sr)
                out[(kbps, strength)] = {"pesq_wb": pesq_wb(x.numpy(), y, sr),
                                         "visqol": scorer.visqol(x.numpy(), y, sr), **listener}
    return out


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint(args.model)
    codec = load_codec(checkpoint).eval()
    own = codec.postfilter
    bitrates = [float(b) for b in args.bitrates.split(",")]
    strengths = [float(s) for s in args.strengths.split(",")]
    scorer = perceptual.get_scorer()
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".flac", ".wav"))
    groups: dict[str, list[dict]] = {}
    for i, path in enumerate(files):
        x = read_audio(path, target_sr=codec.sample_rate).samples[0]
        group = path.relative_to(args.data).parts[0] if args.macro_by_folder else "all"
        groups.setdefault(group, []).append(score_file(codec, x, bitrates, strengths, scorer))
        print(f"[{i + 1}/{len(files)}] {path.name}", file=sys.stderr)
    rows = []
    for kbps in bitrates:
        for strength in strengths:
            means = {m: float(np.mean([np.nanmean([f[(kbps, strength)][m] for f in scored])
                                       for scored in groups.values()])) for m in METRICS}
            rows.append({"kbps": kbps, "strength": strength, **means})
    return {"model": shown_path(checkpoint), "model_id": codec.model_id, "model_postfilter": own,
            "data": shown_path(args.data), "files": len(files),
            "macro_by_folder": sorted(groups) if args.macro_by_folder else None, "rows": rows}


def markdown(result: dict) -> str:
    average = "mean of each top-level folder's mean" if result["macro_by_folder"] else "mean over the files"
    lines = [f"# Formant postfilter strength (model {result['model_id']}, its own strength "
             f"{result['model_postfilter']:g})", "",
             f"`python benchmarks/postfilter_sweep.py`: {result['files']} files of `{result['data']}`, {average}.", "",
             "| kbps | strength | PESQ-WB | ViSQOL | DistillMOS | DNSMOS P.808 | DNSMOS OVRL |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['kbps']:g} | {r['strength']:g} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |"
              for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean", help="folder of speech files")
    p.add_argument("--bitrates", default="1.5,3,6", help="kbps, comma-separated (default: 1.5,3,6)")
    p.add_argument("--strengths", default="0,0.1,0.2,0.3,0.4",
                   help="postfilter strengths, comma-separated (default: 0,0.1,0.2,0.3,0.4)")
    p.add_argument("--macro-by-folder", action="store_true", help="average each top-level folder first")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "postfilter-sweep")
    args = p.parse_args(argv)
    if not perceptual.available():
        p.error('needs the perceptual extra: pip install -e ".[perceptual]"')
    result = run(args)
    atomic_write_json(args.out / "postfilter_sweep.json", result, parents=True)
    atomic_write_text(args.out / "postfilter_sweep.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
