"""Reference constructions shared by several test modules (independent of the library code they check)."""
from __future__ import annotations

import math
import struct
import zlib

import torch


def plane_rotation(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """R (d, d) taking e/‖e‖ onto q/‖q‖, built as the plane rotation I + s(v̂êᵀ − êv̂ᵀ) + (c − 1)(êêᵀ + v̂v̂ᵀ)
    (independent of the Householder form used by the library). Float64 vectors."""
    e_hat, q_hat = e / e.norm(), q / q.norm()
    c = torch.dot(e_hat, q_hat)
    v = q_hat - c * e_hat
    s = v.norm()
    v_hat = v / s
    eye = torch.eye(e.numel(), dtype=e.dtype)
    return eye + s * (torch.outer(v_hat, e_hat) - torch.outer(e_hat, v_hat)) + (c - 1) * (
        torch.outer(e_hat, e_hat) + torch.outer(v_hat, v_hat)
    )


def grit_reference(e: torch.Tensor, q: torch.Tensor, tau: float, rotate: bool) -> torch.Tensor:
    """(d, d) G of ``grit`` (rotate=False) or ``grit_rotation`` (rotate=True), float64, with the documented
    guards (no radius step when ‖e‖ < 1e-6 or ‖q − e‖ < 1e-6‖e‖; the rotation trick's own guards on (y, q))."""
    e, q = e.double(), q.double()
    d = e.numel()
    eye = torch.eye(d, dtype=torch.float64)
    e_norm, delta = e.norm().item(), (q - e).norm().item()
    if e_norm < 1e-6 or delta < 1e-6 * e_norm:
        rho, slope, u = 0.0, 0.0, torch.zeros(d, dtype=torch.float64)
    else:
        u = (q - e) / delta
        if math.isinf(tau):
            rho, slope = delta, 1.0
        else:
            r = tau * e_norm
            rho, slope = r * math.tanh(delta / r), 1.0 - math.tanh(delta / r) ** 2
    radial = eye - slope * torch.outer(u, u)
    if not rotate:
        return radial
    y = e + rho * u
    if q.norm() == 0:
        return torch.zeros_like(eye)  # λ = 0
    cos = (y @ q / (y.norm() * q.norm())).item() if y.norm() > 0 else 1.0
    if y.norm() < 1e-6 or 1 + cos < 1e-5:
        return radial  # the rotation trick's guard: its factor is I
    y_hat, q_hat = y / y.norm(), q / q.norm()
    if (q_hat - (y_hat @ q_hat) * y_hat).norm() == 0:  # y ∥ q exactly (τ = ∞ in float64): R = I
        return (q.norm() / y.norm()) * radial
    return (q.norm() / y.norm()) * plane_rotation(y, q) @ radial


def with_version_byte(data: bytes, version: int) -> bytes:
    """A version 2 ``.rvq`` stream with its version byte (offset 4) rewritten and both checksums fixed, as a genuine
    writer of that version would: the 32 bytes of header fields, their CRC, the payload, the trailing CRC (the
    documented layout, docs/bitstream.md), so its fields keep version 2's length."""
    fields = bytearray(data[:32])
    fields[4] = version
    head = bytes(fields) + struct.pack("<I", zlib.crc32(bytes(fields)))
    payload = data[36:-4]
    return head + payload + struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
