"""Why the rotation trick costs quality here: what it does to the gradient that reaches the encoder, per RVQ stage.

    python benchmarks/rotation_gradients.py                           # the shipped model, 8 dev-clean crops
    python benchmarks/rotation_gradients.py --model runs/x/codec.pt --out /tmp/rg

The forward pass of a trained codec is the same whatever the estimator (every estimator's value is the code), so
the estimators differ only in the gradient they send to the encoder. On ``--crops`` dev-clean crops of
``--seconds`` each, with the training reconstruction loss (15 x mel + 10 x compressed complex STFT + 1 x MR-STFT),
at each number of stages in ``--stages``, this measures:

* per stage k, in the stage's code space (e = W_in r_k, q its code): ``cos(e, q)``, ``‖q‖/‖e‖`` (the rotation
  trick's scale λ), the relative quantisation error ``‖r_k − W_out q‖² / ‖r_k‖²``, and the local distortion
  ``cos(G_kᵀ g, g)`` between what the rotation trick sends back (G_k = λR) and what STE sends (g, the gradient
  arriving at the stage's output);
* at the encoder output z (the whole latent): the cosine and norm ratio between the gradient under the rotation
  trick in every stage and under STE in every stage; the same with the rotation trick in one stage k only (the
  others STE), which says where the difference comes from; and with the *cumulative* rotation (one rotation from
  z onto the reconstruction Σ q_k, ``estimator_scope="cumulative"``), and with ``grit_rotation`` in every stage
  (the rotation trick on the GRIT-moved latent, the default estimator).

Writes ``rotation_gradients.json`` and ``rotation_gradients.md`` into ``--out``
(default ``benchmarks/results/rotation-gradients``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from common import DEFAULT_OUT, SPEECH_ROOT, fmt_number, shown_path  # noqa: E402
from rvqcodec.data.audio_io import read_audio  # noqa: E402
from rvqcodec.fileio import atomic_write_json, atomic_write_text  # noqa: E402
from rvqcodec.losses import ReconstructionLoss  # noqa: E402
from rvqcodec.pretrained import load_codec, resolve_checkpoint  # noqa: E402
from rvqcodec.quantize.estimators import rotation_trick  # noqa: E402
from rvqcodec.training.config import LossConfig  # noqa: E402


def crops(folder: Path, count: int, seconds: float, sample_rate: int) -> torch.Tensor:
    """``(count, 1, seconds·sr)``: the middle of the first ``count`` files (sorted) long enough."""
    length = int(seconds * sample_rate)
    out = []
    for path in sorted(folder.rglob("*.flac")):
        x = read_audio(path, target_sr=sample_rate).samples[0]
        if x.numel() >= length:
            start = (x.numel() - length) // 2
            out.append(x[start:start + length])
        if len(out) == count:
            break
    return torch.stack(out)[:, None]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def latent_gradient(codec, latent: torch.Tensor, wav: torch.Tensor, n_q: int, loss_fn, estimators: list[str],
                    scope: str = "stage") -> torch.Tensor:
    """∂loss/∂z at the encoder output for the given per-stage estimators (forward values are the same)."""
    quantizer = codec.quantizer
    saved = [layer.estimator for layer in quantizer.layers], quantizer.estimator_scope
    try:
        for layer, name in zip(quantizer.layers, estimators):
            layer.estimator = name
        quantizer.estimator_scope = scope
        z = latent.detach().requires_grad_()
        out = quantizer(z, n_q=n_q)
        audio = codec.decode_latent(out.quantized, n_q)[..., :wav.shape[-1]]
        loss_fn(audio, wav)["total"].backward()
        return z.grad.detach()
    finally:
        for layer, name in zip(quantizer.layers, saved[0]):
            layer.estimator = name
        quantizer.estimator_scope = saved[1]


def stage_geometry(codec, latent: torch.Tensor, wav: torch.Tensor, n_q: int, loss_fn) -> list[dict]:
    """Per stage: cos(e, q), λ, relative QE and the local cosine cos(λRᵀg, g) (module docstring)."""
    quantizer = codec.quantizer
    residual, grads, records = latent.detach(), [], []
    outputs = []
    for layer in quantizer.layers[:n_q]:
        e = layer.project_in(residual.transpose(1, 2).reshape(-1, residual.shape[1]))
        q = layer.codebook.embed_codes(layer.codebook.lookup(e))
        out = layer.project_out(q).reshape(residual.shape[0], residual.shape[2], -1).transpose(1, 2)
        q_leaf = q.detach().clone().requires_grad_()
        outputs.append((e.detach(), q.detach(), q_leaf, residual, out))
        residual = residual - out.detach()
    total = sum(layer.project_out(q_leaf).reshape(latent.shape[0], latent.shape[2], -1).transpose(1, 2)
                for layer, (_, _, q_leaf, _, _) in zip(quantizer.layers, outputs))
    audio = codec.decode_latent(total, n_q)[..., :wav.shape[-1]]
    loss_fn(audio, wav)["total"].backward()
    for k, (e, q, q_leaf, r, out) in enumerate(outputs, start=1):
        g = q_leaf.grad
        e_leaf = e.clone().requires_grad_()
        (rotation_trick(e_leaf, q) * g).sum().backward()
        rot = e_leaf.grad
        cos_eq = torch.nn.functional.cosine_similarity(e, q, dim=-1)
        records.append({
            "stage": k,
            "cos_e_q": float(cos_eq.mean()),
            "scale": float((q.norm(dim=-1) / e.norm(dim=-1).clamp_min(1e-8)).median()),
            "rel_qe": float((r - out.detach()).pow(2).sum() / r.pow(2).sum()),
            "local_grad_cos": cosine(rot, g),
            "local_grad_norm_ratio": float(rot.norm() / g.norm().clamp_min(1e-12)),
        })
        grads.append(g)
    return records


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    checkpoint = resolve_checkpoint(args.model)
    codec = load_codec(checkpoint).eval()
    wav = crops(args.data, args.crops, args.seconds, codec.sample_rate)
    loss_fn = ReconstructionLoss(LossConfig(mel=15.0, complex=10.0, mrstft=1.0).reconstruction(codec.sample_rate))
    with torch.no_grad():
        latent = codec.encoder(wav)
    result = {"model": shown_path(checkpoint), "model_id": codec.model_id, "crops": args.crops,
              "seconds": args.seconds, "by_stages": []}
    n_total = codec.quantizer.n_q
    for n_q in args.stages:
        ste = latent_gradient(codec, latent, wav, n_q, loss_fn, ["ste"] * n_total)
        rot = latent_gradient(codec, latent, wav, n_q, loss_fn, ["rotation"] * n_total)
        cumulative = latent_gradient(codec, latent, wav, n_q, loss_fn, ["rotation"] * n_total, scope="cumulative")
        grit = latent_gradient(codec, latent, wav, n_q, loss_fn, ["grit_rotation"] * n_total)
        single = []
        for k in range(n_q):
            names = ["ste"] * n_total
            names[k] = "rotation"
            g = latent_gradient(codec, latent, wav, n_q, loss_fn, names)
            single.append({"stage": k + 1, "cos_with_ste": cosine(g, ste),
                           "norm_ratio": float(g.norm() / ste.norm())})
        result["by_stages"].append({
            "n_q": n_q,
            "rotation_vs_ste": {"cos": cosine(rot, ste), "norm_ratio": float(rot.norm() / ste.norm())},
            "cumulative_vs_ste": {"cos": cosine(cumulative, ste), "norm_ratio": float(cumulative.norm() / ste.norm())},
            "grit_rotation_vs_ste": {"cos": cosine(grit, ste), "norm_ratio": float(grit.norm() / ste.norm())},
            "rotation_in_one_stage": single,
            "stages": stage_geometry(codec, latent, wav, n_q, loss_fn),
        })
        print(f"n_q={n_q}: cos(rotation, STE) at the latent {cosine(rot, ste):.3f}, "
              f"cumulative {cosine(cumulative, ste):.3f}, grit_rotation {cosine(grit, ste):.3f}", file=sys.stderr)
    return result


def markdown(result: dict) -> str:
    lines = [f"# The rotation trick's gradient against STE's (model {result['model_id']})", "",
             f"`python benchmarks/rotation_gradients.py` on `{result['model']}`: {result['crops']} dev-clean crops of "
             f"{result['seconds']:g} s, the training reconstruction loss. Forward values are identical for every "
             "estimator; only the gradient at the encoder output differs.", ""]
    for block in result["by_stages"]:
        r, c, g = block["rotation_vs_ste"], block["cumulative_vs_ste"], block["grit_rotation_vs_ste"]
        lines += [f"## {block['n_q']} stages", "",
                  f"At the latent: cos(rotation in every stage, STE) = {r['cos']:.3f} (norm ratio "
                  f"{r['norm_ratio']:.2f}); cumulative rotation vs STE: cos {c['cos']:.3f} (norm ratio "
                  f"{c['norm_ratio']:.2f}); grit_rotation in every stage vs STE: cos {g['cos']:.3f} (norm ratio "
                  f"{g['norm_ratio']:.2f}).", "",
                  "| stage | cos(e, q) | ‖q‖/‖e‖ (median) | rel. QE | local cos(λRᵀg, g) | local norm ratio | "
                  "latent cos, rotation in this stage only |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for s, one in zip(block["stages"], block["rotation_in_one_stage"]):
            lines.append(f"| {s['stage']} | {fmt_number(s['cos_e_q'], '.3f')} | {fmt_number(s['scale'], '.2f')} | "
                         f"{fmt_number(s['rel_qe'], '.3f')} | {fmt_number(s['local_grad_cos'], '.3f')} | "
                         f"{fmt_number(s['local_grad_norm_ratio'], '.2f')} | {fmt_number(one['cos_with_ste'], '.3f')} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="codec checkpoint (default: the shipped model)")
    p.add_argument("--data", type=Path, default=SPEECH_ROOT / "dev-clean", help="speech folder (default: dev-clean)")
    p.add_argument("--crops", type=int, default=8)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--stages", type=lambda s: [int(x) for x in s.split(",")], default=[4, 16],
                   help="numbers of stages, comma-separated (default: 4,16)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "rotation-gradients")
    args = p.parse_args(argv)
    result = run(args)
    atomic_write_json(args.out / "rotation_gradients.json", result, parents=True)
    atomic_write_text(args.out / "rotation_gradients.md", markdown(result), parents=True)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
