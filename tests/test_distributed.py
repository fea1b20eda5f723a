"""Two CPU processes (gloo) training an RVQ on different data must hold identical codebooks."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rvqcodec.quantize import ResidualVQ


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        rvq = ResidualVQ(8, 3, 16, quantizer_dropout=0.5, dead_code_threshold=0.5, decay=0.9)
        torch.manual_seed(100 + rank)  # different data, k-means draws and dropout draws on each rank
        for _ in range(6):
            z = (torch.randn(2, 8, 40) * (1 + rank)).requires_grad_(True)
            out = rvq(z)
            out.commit_loss.backward()
        stats = rvq.stats_dict(prefix="vq")
        torch.save({"state": rvq.state_dict(), "stats": stats}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_codebooks_stay_identical(tmp_path):
    init_file = tmp_path / "init"
    out_file = tmp_path / "state"
    mp.spawn(_worker, args=(2, str(init_file), str(out_file)), nprocs=2, join=True)
    a = torch.load(f"{out_file}.0")
    b = torch.load(f"{out_file}.1")
    assert a["state"].keys() == b["state"].keys()
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key]), key
    assert a["stats"] == b["stats"]  # statistics are all-reduced too
    # and each rank actually saw its own data: single-process training on rank 0's data differs
    torch.manual_seed(0)
    solo = ResidualVQ(8, 3, 16, quantizer_dropout=0.5, dead_code_threshold=0.5, decay=0.9)
    torch.manual_seed(100)
    for _ in range(6):
        solo(torch.randn(2, 8, 40))
    assert not torch.equal(solo.layers[0].codebook.embed, a["state"]["layers.0.codebook.embed"])
