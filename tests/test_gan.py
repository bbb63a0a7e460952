"""The GAN's two players stay apart: the generator's terms never train the discriminator, and
under DDP every rank ends with the same discriminator."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bsqaudio.train.gan import Adversary, PatchDiscriminator, judged


def mels(batch: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 64, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_generator_terms_reach_the_decoder_output_and_never_the_discriminator():
    adversary = Adversary(PatchDiscriminator(channels=8, layers=2), 1e-3, torch.device("cpu"), False)
    fake = mels(2, 0).requires_grad_(True)
    adv, fm = adversary.generator_losses(fake, mels(2, 1))
    (adv + fm).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in adversary.core.parameters())
    assert all(p.requires_grad for p in adversary.core.parameters())  # unfrozen again for its own step


def test_discriminator_step_learns_to_tell_real_from_fake():
    torch.manual_seed(0)
    adversary = Adversary(PatchDiscriminator(channels=8, layers=2), 2e-3, torch.device("cpu"), False)
    real, fake = mels(4, 0).sign() * 0.9, mels(4, 1) * 0.3  # saturated "harmonics" against mush
    first = adversary.discriminator_backward(real, fake, 1.0)
    adversary.step()
    for _ in range(20):
        last = adversary.discriminator_backward(real, fake, 1.0)
        adversary.step()
    assert last < 0.5 * first


def test_judged_hides_the_padding_and_clamps_like_decoding():
    pred, target = torch.full((1, 4, 2), 3.0), torch.full((1, 4, 2), -1.0)
    out = judged(pred, target, torch.tensor([[True, True, False, False]]))
    assert out[0, :2].eq(1.0).all() and out[0, 2:].eq(-1.0).all()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_steps(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # the same initial discriminator on both ranks, as DDP assumes
        adversary = Adversary(PatchDiscriminator(channels=8, layers=2), 1e-2, torch.device("cpu"), True)
        for step in range(3):  # each rank sees its own data
            adversary.discriminator_backward(mels(2, 10 * rank + step), mels(2, 100 + 10 * rank + step), 1.0)
            adversary.step()
        # numpy, not tensors: a tensor crosses processes by shared memory that dies with this one
        queue.put((rank, {k: v.numpy().copy() for k, v in adversary.core.state_dict().items()}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_with_the_same_discriminator():
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    procs = [context.Process(target=_rank_steps, args=(rank, 2, port, queue)) for rank in range(2)]
    for proc in procs:
        proc.start()
    states = {rank: {k: torch.from_numpy(v) for k, v in state.items()}
              for rank, state in (queue.get(timeout=120) for _ in procs)}
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert states[0].keys() == states[1].keys()
    assert all(torch.allclose(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(0)
    initial = PatchDiscriminator(channels=8, layers=2).state_dict()
    assert any(not torch.equal(initial[k], states[0][k]) for k in initial)  # and it did train
