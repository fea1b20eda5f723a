"""What the listening page looks like: its HTML (from the manifest that ``listening.py`` measures) and its
spectrogram images.

The page is one static HTML file with inline CSS, no JavaScript and no external resource: it opens from the file
system, offline. It refers only to files beside it (``audio/*.flac``, ``img/*.png``), by relative paths;
:func:`referenced_files` lists them (the tests and the browser check use it).
"""
from __future__ import annotations

import html
import io
from html.parser import HTMLParser

import numpy as np
import torch

from common import fmt_number  # benchmarks/ is on sys.path wherever this module is imported

SPECTROGRAM_N_FFT = 512  # 32 ms at 16 kHz
SPECTROGRAM_HOP = 160  # 10 ms
SPECTROGRAM_RANGE_DB = 80.0
SPECTROGRAM_WIDTH_IN = 8.6  # 774 px: shown at its natural size beside the players on a 1400 px wide window
SPECTROGRAM_PANEL_IN = 0.62
SPECTROGRAM_DPI = 90
SPECTROGRAM_LEVELS = 16  # colour steps of 5 dB: the eye sees no more, and flat areas compress well
PNG_COLOURS = 64  # images are stored as palette PNGs: a fraction of the size of full-colour ones


def compact_png(png: bytes, colours: int = PNG_COLOURS) -> bytes:
    """``png`` re-encoded as a ``colours``-colour palette PNG (lossy in colour only; much smaller)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue()


def _log_spectrogram(x: np.ndarray) -> np.ndarray:
    """``(freq, frames)`` magnitude in dB of a Hann-window STFT."""
    spec = torch.stft(torch.from_numpy(np.asarray(x, dtype=np.float32)), SPECTROGRAM_N_FFT, SPECTROGRAM_HOP,
                      window=torch.hann_window(SPECTROGRAM_N_FFT), center=True, return_complex=True)
    return (20.0 * torch.log10(spec.abs() + 1e-7)).numpy()


def spectrogram_png(panels: list[tuple[str, np.ndarray]], sample_rate: int, title: str) -> bytes:
    """One PNG with a spectrogram per ``(label, signal)`` panel, stacked on one time axis.

    Every panel uses the colour scale of the first (the reference): its loudest bin down to
    :data:`SPECTROGRAM_RANGE_DB` below it, so that what a codec adds or loses shows as a change of colour.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    cmap = matplotlib.colormaps["magma"].resampled(SPECTROGRAM_LEVELS)
    specs = [_log_spectrogram(x) for _, x in panels]
    vmax = float(specs[0].max())
    seconds = max(x.size for _, x in panels) / sample_rate
    top_khz = sample_rate / 2000
    fig, axes = plt.subplots(len(panels), 1, sharex=True, squeeze=False, dpi=SPECTROGRAM_DPI,
                             figsize=(SPECTROGRAM_WIDTH_IN, SPECTROGRAM_PANEL_IN * len(panels) + 0.75))
    for ax, (label, _), spec in zip(axes[:, 0], panels, specs):
        ax.imshow(spec, origin="lower", aspect="auto", cmap=cmap, interpolation="nearest",
                  vmin=vmax - SPECTROGRAM_RANGE_DB, vmax=vmax,
                  extent=(0.0, spec.shape[1] * SPECTROGRAM_HOP / sample_rate, 0.0, top_khz))
        ax.set_xlim(0.0, seconds)
        ticks = (top_khz / 4, top_khz / 2, 3 * top_khz / 4)  # not at the edges, where panels meet
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{v:g}" for v in ticks], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.text(0.005, 0.93, label, transform=ax.transAxes, fontsize=8, va="top", ha="left",
                bbox=dict(boxstyle="square,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    axes[-1, 0].set_xlabel("time (s)", fontsize=8)
    fig.supylabel("frequency (kHz)", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(left=0.075, right=0.99, top=1 - 0.32 / fig.get_figheight(),
                        bottom=0.42 / fig.get_figheight(), hspace=0.07)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return compact_png(buffer.getvalue())


# ------------------------------------------------------------------------------------------------ HTML


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; background: #f6f6f4;
       color: #1d1d1f; }
main { max-width: 1360px; margin: 0 auto; padding: 16px 20px 40px; }
h1 { font-size: 1.5em; margin: 0.2em 0; }
h2 { font-size: 1.1em; margin: 0 0 8px; }
.meta { color: #444; margin: 0 0 6px; }
p, li { line-height: 1.4; }
code { background: #e9e9e6; padding: 0 3px; border-radius: 3px; }
table.means { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
table.means th, table.means td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
table.means th:first-child, table.means td:first-child { text-align: left; }
.notes { background: #fff6e0; border: 1px solid #ecd9a6; padding: 6px 12px; border-radius: 4px; }
section.clip { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px 14px;
               margin: 14px 0; }
.row { display: flex; gap: 14px; align-items: flex-start; }
.players { flex: 0 0 520px; display: flex; flex-direction: column; gap: 6px; }
.version { border-left: 4px solid #888; padding: 2px 0 2px 8px; }
.version.reference { border-color: #2b7a3d; }
.version.rvqcodec { border-color: #2f5fb3; }
.version.external { border-color: #b36b2f; }
.version .name { font-weight: 600; font-size: 0.92em; }
.version audio { display: block; width: 100%; height: 32px; margin: 2px 0; }
.version .scores { font-size: 0.85em; color: #333; font-variant-numeric: tabular-nums; }
.version .failed { color: #a00; font-size: 0.85em; }
figure { margin: 0; flex: 1 1 auto; min-width: 0; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.8em; color: #555; }
footer { color: #555; font-size: 0.85em; margin-top: 24px; }
"""


LISTENER_LABELS = (("distillmos", "DistillMOS"), ("dnsmos_p808", "DNSMOS"), ("visqol", "ViSQOL"))


def _listener_part(entry: dict) -> str:
    return "".join(f" · {label} {fmt_number(entry[key], '.2f')}" for key, label in LISTENER_LABELS
                   if entry.get(key) is not None)


def _scores_line(entry: dict) -> str:
    if entry["key"] == "reference":
        return (f"lossless FLAC, {fmt_number(entry['file_kbps'], '.0f')} kbps file · the original samples"
                + _listener_part(entry))
    return (f"measured {fmt_number(entry['measured_kbps'], '.2f')} kbps · "
            f"PESQ-WB {fmt_number(entry['pesq_wb'], '.2f')} · STOI {fmt_number(entry['stoi'], '.3f')}"
            + _listener_part(entry))


def _version_block(version: dict, entry: dict) -> str:
    kind = "reference" if version["key"] == "reference" else (
        "rvqcodec" if version["codec"] == "rvqcodec" else "external")
    esc = html.escape
    parts = [f'<div class="version {kind}">', f'<div class="name">{esc(version["label"])}</div>']
    if "error" in entry:
        parts.append(f'<div class="failed">not available for this clip: {esc(entry["error"])}</div>')
    else:
        parts.append(f'<audio controls preload="metadata" src="{esc(entry["audio"])}"></audio>')
        parts.append(f'<div class="scores">{esc(_scores_line(entry))}</div>')
    parts.append("</div>")
    return "".join(parts)


def _means_table(manifest: dict) -> str:
    listener = [(key, label) for key, label in LISTENER_LABELS if manifest["means"] and key in manifest["means"][0]]
    rows = ["<table class=\"means\"><thead><tr><th>version</th><th>measured kbps</th><th>PESQ-WB</th>"
            "<th>STOI</th>" + "".join(f"<th>{label}</th>" for _, label in listener) + "<th>clips</th></tr></thead><tbody>"]
    for m in manifest["means"]:
        rows.append(f"<tr><td>{html.escape(m['label'])}</td><td>{fmt_number(m['measured_kbps'], '.2f')}</td>"
                    f"<td>{fmt_number(m['pesq_wb'], '.2f')}</td><td>{fmt_number(m['stoi'], '.3f')}</td>"
                    + "".join(f"<td>{fmt_number(m[key], '.2f')}</td>" for key, _ in listener)
                    + f"<td>{m['clips']}</td></tr>")
    rows.append("</tbody></table>")
    return "".join(rows)


def render_html(manifest: dict) -> str:
    """The page for a manifest written by ``benchmarks/listening.py`` (see its ``build_manifest``)."""
    esc = html.escape
    model = manifest["model"]
    versions = {v["key"]: v for v in manifest["versions"]}
    n_clips = len(manifest["clips"])
    selection = manifest["selection"]
    head = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>rvqcodec listening page (model {esc(model['model_id'])})</title>",
        f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
        "<h1>rvqcodec: listen to each bitrate beside Opus, AMR-WB and Codec2</h1>",
        f'<p class="meta">Model <code>{esc(model["model_id"])}</code> (<code>{esc(model["path"])}</code>, '
        f'{model["parameters"]:,} parameters, decoded with formant postfilter {model.get("postfilter", 0.0):g}'
        f'{", input level normalized" if model.get("normalize") else ""})'
        f' · generated {esc(manifest["created_display"])} by '
        f'<code>{esc(manifest["command"])}</code></p>',
        f"<p>{n_clips} clip{'s' if n_clips != 1 else ''} of held-out speech (<code>{esc(manifest['data'])}</code>, "
        "never used for training), each encoded and decoded by every codec below. A decoded version is shifted by "
        "the delay its codec adds (measured against the reference, as for the scores) so that the players and "
        "the spectrograms line up "
        "with the reference, and is stored as lossless 16 kHz FLAC: what you hear is exactly what the codec "
        "decoded. Under each player: the bitrate measured from the bytes the encoder produced for this clip "
        "(rvqcodec: the whole <code>.rvq</code> file, header included; Opus: the Opus packets; AMR-WB: the speech "
        "bytes; Codec2: the bit file), and PESQ-WB (1.04-4.64) and STOI (0-1) against the reference, computed "
        "as in <code>benchmarks/quality.py</code>, and the listener models DistillMOS and DNSMOS P.808 (1-5, of the "
        "version alone; the reference gets its own) and ViSQOL v3 speech (1-5, against the reference). "
        "Headphones help.</p>",
        f"<p>Clips: {esc(selection['summary'])}</p>",
    ]
    if manifest["notes"]:
        head.append('<div class="notes"><p><b>Not on this page:</b></p><ul>'
                    + "".join(f"<li>{esc(n)}</li>" for n in manifest["notes"]) + "</ul></div>")
    head.append(f"<h2>Means over these {n_clips} clips</h2>")
    head.append(_means_table(manifest))
    head.append("<p class=\"meta\">Short clips give noisy scores; the benchmark over all of dev-clean is "
                "<code>benchmarks/results/quality.md</code>.</p>")
    body = []
    for i, clip in enumerate(manifest["clips"], 1):
        f0 = fmt_number(clip["f0_hz"], ".0f")
        body.append('<section class="clip">')
        body.append(f"<h2>Clip {i}: {esc(clip['utterance'])} · speaker {esc(clip['speaker'])} "
                    f"({esc(clip['group'])}, median F0 {f0} Hz) · {clip['seconds']:.2f} s from "
                    f"{clip['start_seconds']:.2f} s</h2>")
        body.append('<div class="row"><div class="players">')
        for entry in clip["versions"]:
            body.append(_version_block(versions[entry["key"]], entry))
        body.append("</div>")
        body.append(f'<figure><img src="{esc(clip["spectrogram"])}" alt="spectrograms of clip {i}, '
                    f'{esc(clip["utterance"])}, every version on one time axis" loading="eager">'
                    "<figcaption>Spectrograms, top to bottom in the order of the players (0-8 kHz, 80 dB range "
                    "relative to the reference's loudest bin).</figcaption></figure>")
        body.append("</div></section>")
    foot = ["<footer><p>Speech: LibriSpeech ASR corpus (c) 2014 Vassil Panayotov, CC BY 4.0 (V. Panayotov, "
            "G. Chen, D. Povey, S. Khudanpur, ICASSP 2015), from LibriVox public-domain audiobooks; clips cut "
            "from the original 16 kHz files without any other change. Regenerate this page with "
            "<code>python benchmarks/listening.py --browser-check</code> whenever the default model changes."
            "</p></footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(head + body + foot)


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("src", "href", "poster", "data") and value:
                self.refs.append((tag, value))


def referenced_files(page_html: str) -> list[tuple[str, str]]:
    """``(tag, url)`` of every resource the page refers to (``src``, ``href``, ``poster``, ``data``), in order."""
    parser = _References()
    parser.feed(page_html)
    return parser.refs


def count_scripts(page_html: str) -> int:
    """How many ``<script>`` elements the page has (the listening page has none)."""
    parser = _References()
    parser.feed(page_html)
    return parser.scripts
