"""Experiment: an adversarial post-filter on the frozen decoder's output (Kaneko et al. 2017,
"Generative adversarial network-based postfilter for statistical parametric speech synthesis").

    python benchmarks/postfilter_gan.py TRAIN_LIST HELDOUT_SPEECH_LIST --out RUN \
        [--l1 10 --adv 0.3 --fm 1 --lr 1e-4 --val-every 200]

Why: the decoder, trained on reconstruction, outputs over-smoothed spectrograms; in statistical
speech synthesis a residual conv net trained against a discriminator on such output restores
their texture. It is cheap on a CPU: the embedded model's decoder output (codes and decoder
frozen) for up to --windows training windows (at most 4 a file) is computed once into
RUN/cache.npz, then only the post-filter (residual, dilated 3x3 convolutions, last layer zero so
it starts as the identity) and a PatchGAN train, on random --crop-frame crops, with L1 +
hinge + feature matching. Every --val-every steps the post-filter, chained after the decoder's
refiner, decodes the held-out speech through the real ``Codec`` (Griffin-Lim included) and
DistillMOS, DNSMOS and the mel error of the audio are logged to RUN/log.jsonl; its weights go to
RUN/postfilter_STEP.safetensors. Results: bsqaudio/weights/MODEL_CARD.md (Session 9).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from bsqaudio.codec import Codec
from bsqaudio.io.audio_files import load_mono
from bsqaudio.metrics import naturalness
from bsqaudio.model.tokenizer import unpatchify
from bsqaudio.train.gan import PatchDiscriminator, feature_matching_loss, hinge_discriminator_loss


class PostFilter(nn.Module):
    def __init__(self, channels: int = 32, dilations=(1, 2, 4, 8)) -> None:
        super().__init__()
        self.inp = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.out = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(self, x):
        h = self.inp(x[:, None])
        for b in self.blocks:
            h = h + b(F.gelu(h))
        return self.out(F.gelu(h))[:, 0]

    def forward(self, mel):
        if torch.is_grad_enabled():
            return mel + self.residual(mel)
        return torch.cat([m + self.residual(m) for m in mel.split(1)])


class Chain(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        self.first, self.second = first, second

    def forward(self, x):
        return self.second(self.first(x))


@torch.no_grad()
def decoder_output(model, mel):
    c = model.config
    q = model.encode(mel)
    x = model.decoder(model.post_quant_embed(q.codes) + model.decoder_pos)
    pre = unpatchify(model.head(x), c.patch_time, c.patch_freq, c.grid_time, c.grid_freq)
    return model.refiner(pre)


def build_cache(codec, files, windows, out):
    c = codec.config
    ins, tgts, frames = [], [], []
    random.Random(0).shuffle(files)
    t0 = time.time()
    for f in files:
        wave, _, _ = load_mono(f, c.sample_rate)
        mel, _ = codec.frontend.analyze(wave)
        dec = torch.cat([decoder_output(codec.model, m) for m in mel.split(1)])
        total = c.num_frames(wave.shape[0])
        for w in range(min(mel.shape[0], 4)):
            real = min(c.window_frames, total - w * c.window_frames)
            if real < 128:
                continue
            ins.append(dec[w].half().numpy())
            tgts.append(mel[w].half().numpy())
            frames.append(real)
        if len(ins) >= windows:
            break
        if len(ins) % 100 < 3:
            print(f"cache {len(ins)} windows, {time.time() - t0:.0f} s", flush=True)
    np.savez(out, inp=np.stack(ins), tgt=np.stack(tgts), frames=np.array(frames))


def validate(codec, pf, refs):
    original = codec.model.refiner
    codec.model.refiner = Chain(original, pf.eval())
    scores = []
    try:
        for wave in refs:
            codes = codec.encode(wave, codec.config.sample_rate)
            out = codec.decode(codes)
            m = naturalness(out, 16000)
            p_ref = codec.frontend.normalize(codec.frontend.power_mel(wave[None]))[0]
            p_out = codec.frontend.normalize(codec.frontend.power_mel(out[None]))[0]
            n = min(p_ref.shape[1], p_out.shape[1])
            m["mel_mae_db"] = float((p_ref[:, :n] - p_out[:, :n]).abs().mean() * codec.config.db_range / 2)
            scores.append(m)
    finally:
        codec.model.refiner = original
        pf.train()
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("train_list", type=Path)
    ap.add_argument("val_list", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--windows", type=int, default=1200)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--adv", type=float, default=1.0)
    ap.add_argument("--fm", type=float, default=2.0)
    ap.add_argument("--l1", type=float, default=1.0)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--disc-layers", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    codec = Codec.from_pretrained(device="cpu")
    codec.model.float().eval()
    cache = args.out / "cache.npz"
    if not cache.exists():
        build_cache(codec, args.train_list.read_text().split(), args.windows, cache)
    data = np.load(cache)
    inp, tgt, frames = torch.from_numpy(data["inp"]), torch.from_numpy(data["tgt"]), data["frames"]
    print(f"{inp.shape[0]} cached windows", flush=True)
    val_files = args.val_list.read_text().split()
    refs = [load_mono(f, 16000)[0] for f in val_files]

    pf = PostFilter(args.channels)
    disc = PatchDiscriminator(32, args.disc_layers)
    opt_g = torch.optim.AdamW(pf.parameters(), lr=args.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.AdamW(disc.parameters(), lr=args.lr, betas=(0.5, 0.9))
    step = 0
    log = open(args.out / "log.jsonl", "a")
    v = validate(codec, pf, refs)
    print("val", 0, v, flush=True)
    log.write(json.dumps({"step": 0, **v}) + "\n")
    log.flush()
    rng = np.random.default_rng(0)
    t0 = time.time()
    while step < args.steps:
        idx = rng.integers(0, inp.shape[0], args.batch)
        x, y = [], []
        for i in idx:
            hi = max(1, int(frames[i]) - args.crop)
            s = int(rng.integers(0, hi))
            x.append(inp[i, s:s + args.crop].float())
            y.append(tgt[i, s:s + args.crop].float())
        x, y = torch.stack(x), torch.stack(y)
        if x.shape[1] < args.crop:
            continue
        fake = pf(x)
        # discriminator
        logits, _ = disc(torch.cat([y, fake.detach().clamp(-1, 1)]))
        r, f = logits.chunk(2)
        d_loss = hinge_discriminator_loss(r, f)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        # generator
        disc.requires_grad_(False)
        f_logits, f_feat = disc(fake.clamp(-1, 1))
        with torch.no_grad():
            _, r_feat = disc(y)
        disc.requires_grad_(True)
        g_adv = -f_logits.mean()
        fm = feature_matching_loss(f_feat, r_feat)
        l1 = (fake - y).abs().mean()
        g_loss = args.l1 * l1 + args.adv * g_adv + args.fm * fm
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        step += 1
        if step % 25 == 0:
            rec = {"step": step, "d": float(d_loss), "g_adv": float(g_adv), "fm": float(fm), "l1_db": float(l1) * 40,
                   "s_per_step": (time.time() - t0) / 25}
            t0 = time.time()
            print(rec, flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % args.val_every == 0 or step == args.steps:
            save_file({k: v.contiguous() for k, v in pf.state_dict().items()},
                      str(args.out / f"postfilter_{step}.safetensors"))
            v = validate(codec, pf, refs)
            print("val", step, v, flush=True)
            log.write(json.dumps({"step": step, **v}) + "\n")
            log.flush()
            t0 = time.time()


if __name__ == "__main__":
    main()
