"""Data-parallel training under torchrun: set-up and tear-down, agreement between ranks, replica checks.

    torchrun --standalone --nproc_per_node=2 train.py --device cpu ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; without them everything here is a no-op for one process.
"""
import gc
import os

import torch
import torch.distributed as dist

import cli


def setup(device_arg):
    """(rank, world, device): NCCL on CUDA, Gloo on the CPU."""
    device = cli.pick_device(device_arg)
    if "RANK" not in os.environ:
        return 0, 1, device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, torch.device(f"cuda:{local}") if device.type == "cuda" else device


def agree(loss, flags, world):
    """(mean loss over ranks, for each flag whether any rank raised it), the same on every rank, in one
    all-reduce joined to the loss: one host sync per step, and every rank stops on the same step."""
    if world == 1:
        return float(loss), tuple(flags)
    both = torch.cat([loss.detach().float().reshape(1), torch.tensor([float(f) for f in flags], device=loss.device)])
    dist.all_reduce(both)  # SUM: Gloo has no AVG
    return float(both[0]) / world, tuple(bool(f > 0) for f in both[1:])


def check_replicas(model, rank, world):
    """DDP keeps replicas identical; check it rather than trust it."""
    if world == 1:
        return
    flat = torch.cat([v.detach().float().flatten() for v in model.state_dict().values()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    if rank == 1:
        print(f"rank 1 weights {'match' if torch.equal(flat, ref) else 'DIFFER FROM'} rank 0", flush=True)
    dist.barrier()


def end(world):
    """Destroy the process group on every way out, once the loop has returned and with it the DDP wrapper,
    which holds the group too (gc for any cycle): destroyed while DDP lived, Gloo's threads could outlive
    it into interpreter exit, where a rank sometimes aborted."""
    if world > 1 and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
