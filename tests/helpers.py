"""Reference constructions shared by several test modules (independent of the library code they check)."""
from __future__ import annotations

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
