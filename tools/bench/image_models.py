#!/usr/bin/env python3
r"""Training throughput of the `unet` and `dit` models of plugins/models-image, in plain PyTorch.

The two networks below mirror plugins/models-image/unet.cpp and dit.cpp layer for layer (same
widths, blocks, zero-initialised outputs; parameter counts agree), so their images/s is the bar
the C++ models must reach on the same machine and the same LibTorch (Debian's 1.13 here). One step
is what the engine does in training: a flow-matching loss on a batch (x_t = t x1 + (1 - t) x0,
target x1 - x0), backward, one AdamW step.

    /usr/bin/python3 tools/bench/image_models.py                    # both models, fp32 and bf16
    /usr/bin/python3 tools/bench/image_models.py --model dit --precision bf16 --steps 5

The networks are written the plain PyTorch way (nn.Linear, softmax, F.gelu); the C++ models compute
the same functions, with other kernels where LibTorch 1.13's are slow on CPU (token Linear layers
as 1x1 convolutions, which oneDNN runs; their own bfloat16 softmax backward and tanh-GELU).
Initialisations other than the zeroed layers are PyTorch's defaults: they do not change the speed.

On a shared or virtualised machine wall time can vary several-fold between runs; each result line
is followed by the CPU time and page faults per step. Two settings of the environment, the same
for this script and the C++ models, remove most of the variation: glibc keeping freed memory
instead of unmapping it (every new 80 MB attention tensor otherwise faults in page by page), and
OpenMP threads that sleep instead of spinning at the end of parallel regions:

    OMP_WAIT_POLICY=passive \
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=67108864 \
    /usr/bin/python3 tools/bench/image_models.py
"""
import argparse
import json
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def groups_for(channels):
    # The largest of 32, 16, ..., 1 that divides the channel count (GroupNorm needs a divisor).
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def normalise(norm, x):
    # In the norm's own precision: under CPU bfloat16 autocast the convolutions hand over bfloat16,
    # and 1.13's CPU group norm refuses it with float32 weights (as in unet.cpp).
    return norm(x.to(norm.weight.dtype))


def sinusoidal(t, features):
    # sin(w_k t), cos(w_k t), angular frequencies w_k geometric from 1 to 1000 (as the C++ models).
    half = features // 2
    w = torch.logspace(0.0, 3.0, half) if half > 1 else torch.ones(1)
    phase = t.reshape(-1, 1).float() * w
    return torch.cat([phase.sin(), phase.cos()], 1)


# ------------------------------------------------------------------------------------------------
# U-Net


class ResBlock(nn.Module):
    def __init__(self, cin, cout, emb, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups_for(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups_for(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, e):
        h = self.conv1(F.silu(normalise(self.norm1, x)))
        scale, shift = self.emb(e)[:, :, None, None].chunk(2, 1)
        h = torch.addcmul(shift, normalise(self.norm2, h), 1 + scale)
        h = self.conv2(self.drop(F.silu(h)))
        return (x if self.skip is None else self.skip(x)) + h


class Attention(nn.Module):
    def __init__(self, channels, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups_for(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(normalise(self.norm, x)).reshape(b * self.heads, 3 * d, h * w).chunk(3, 1)
        a = torch.baddbmm(torch.empty(1, 1, 1, dtype=q.dtype), q.transpose(1, 2), k, beta=0, alpha=d**-0.5)
        out = torch.bmm(v, a.softmax(-1).transpose(1, 2))
        return x + self.proj(out.reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, shape, num_classes, channels=32, mult=(1, 2, 2), num_res_blocks=1,
                 attention=(7,), heads=4, dropout=0.0, time_features=32):
        super().__init__()
        c_in, size = shape[0], shape[1]
        emb = 4 * channels
        self.time_features = time_features
        self.time = nn.Sequential(nn.Linear(time_features, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.classes = nn.Embedding(num_classes + 1, emb) if num_classes else None
        ch = channels * mult[0]
        self.conv_in = nn.Conv2d(c_in, ch, 3, padding=1)
        self.down = nn.ModuleList()
        skips = [ch]
        for level, m in enumerate(mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, channels * m, emb, dropout))
                ch = channels * m
                if size in attention:
                    self.down.append(Attention(ch, heads))
                skips.append(ch)
            if level + 1 < len(mult):
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                size //= 2
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb, dropout), Attention(ch, heads),
                                  ResBlock(ch, ch, emb, dropout)])
        self.up = nn.ModuleList()
        for level, m in reversed(list(enumerate(mult))):
            for i in range(num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), channels * m, emb, dropout))
                ch = channels * m
                if size in attention:
                    self.up.append(Attention(ch, heads))
                if level > 0 and i == num_res_blocks:
                    self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                 nn.Conv2d(ch, ch, 3, padding=1)))
                    size *= 2
        self.norm_out = nn.GroupNorm(groups_for(ch), ch)
        self.conv_out = nn.Conv2d(ch, c_in, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def run(self, layer, h, e):
        if isinstance(layer, ResBlock):
            return layer(h, e)
        return layer(h)

    def forward(self, x, t, labels=None):
        emb = self.time(sinusoidal(t, self.time_features))
        if self.classes is not None:
            emb = emb + self.classes(labels)
        e = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            h = self.run(layer, h, e)
            if not isinstance(layer, Attention):
                skips.append(h)
        for layer in self.mid:
            h = self.run(layer, h, e)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = torch.cat([h, skips.pop()], 1)
            h = self.run(layer, h, e)
        return self.conv_out(F.silu(normalise(self.norm_out, h)))


# ------------------------------------------------------------------------------------------------
# DiT


def sincos_2d(hidden, rows, cols):
    # First half of the features: the row, second half: the column; each sin then cos of
    # position * 10000^(-i / (hidden / 4)).
    quarter = hidden // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)[:, None] * omega
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)[:, None] * omega
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], 1).float()[None]


class DiTBlock(nn.Module):
    def __init__(self, hidden, heads, mlp_hidden):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)
        self.ada = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x, c):
        b, n, dim = x.shape
        d = dim // self.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None].chunk(6, -1)
        h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).reshape(3, b * self.heads, n, d)
        a = torch.baddbmm(torch.empty(1, 1, 1, dtype=q.dtype), q, k.transpose(1, 2), beta=0, alpha=d**-0.5)
        o = torch.bmm(a.softmax(-1), v).reshape(b, self.heads, n, d).transpose(1, 2).reshape(b, n, dim)
        x = x + gate1 * self.proj(o)
        h = F.layer_norm(x, (dim,), eps=1e-6) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class DiT(nn.Module):
    def __init__(self, shape, num_classes, patch=2, hidden=128, depth=6, heads=4, mlp_ratio=4.0,
                 time_features=256):
        super().__init__()
        c, h, w = shape
        self.shape, self.patch, self.time_features = shape, patch, time_features
        self.embed = nn.Conv2d(c, hidden, patch, stride=patch)
        self.register_buffer("pos", sincos_2d(hidden, h // patch, w // patch))
        self.time = nn.Sequential(nn.Linear(time_features, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.classes = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, int(hidden * mlp_ratio)) for _ in range(depth))
        self.final_ada = nn.Linear(hidden, 2 * hidden)
        self.final = nn.Linear(hidden, patch * patch * c)
        for m in (self.final_ada, self.final):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x, t, labels=None):
        b = x.shape[0]
        c_, h_, w_ = self.shape
        p = self.patch
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        cond = self.time(sinusoidal(t, self.time_features))
        if self.classes is not None:
            cond = cond + self.classes(labels)
        cond = F.silu(cond)
        for block in self.blocks:
            tokens = block(tokens, cond)
        shift, scale = self.final_ada(cond)[:, None].chunk(2, -1)
        out = self.final(F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6) * (1 + scale) + shift)
        out = out.reshape(b, h_ // p, w_ // p, p, p, c_).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c_, h_, w_)


# ------------------------------------------------------------------------------------------------


def bench(name, model, precision, batch, steps, warmup, channels_last, shape, num_classes):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    x1 = torch.rand(batch, *shape, generator=gen) * 2 - 1  # Fashion-MNIST-like range [-1, 1]
    labels = torch.randint(0, num_classes, (batch,), generator=gen)
    if channels_last:
        x1 = x1.contiguous(memory_format=torch.channels_last)

    def step():
        x0 = torch.randn(x1.shape, generator=gen)
        t = torch.rand(batch, generator=gen)
        xt = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * x0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(xt, t, labels)
        loss = (out.float() - (x1 - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    params = sum(p.numel() for p in model.parameters())
    layout = " channels-last" if channels_last else ""
    if JSON:
        print(json.dumps({"model": name, "precision": precision, "parameters": params, "batch": batch,
                          "images_per_s": batch * steps / seconds, "steps_per_s": steps / seconds,
                          "peak_mb": after.ru_maxrss / 1024.0, "threads": torch.get_num_threads()}), flush=True)
        return
    print(f"{name:5s} {precision}{layout}: {params / 1e6:.3f}M parameters, {batch * steps / seconds:7.1f} images/s "
          f"({seconds / steps * 1000:.0f} ms/step, batch {batch}, {torch.get_num_threads()} threads)", flush=True)
    # On a busy or virtualised machine wall time varies a lot; CPU time and page faults (first
    # touches of freshly allocated memory, which the allocator returns to the system) say why.
    print(f"      per step: user {(after.ru_utime - before.ru_utime) / steps:.2f} s, "
          f"sys {(after.ru_stime - before.ru_stime) / steps:.2f} s, "
          f"minor page faults {(after.ru_minflt - before.ru_minflt) // steps}", flush=True)


JSON = False


def main():
    global JSON
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["unet", "dit", "both"], default="both")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--channels-last", action="store_true", help="also time the U-Net in channels-last")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--patch", type=int, default=2, help="the DiT's patch size")
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    JSON = args.json
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    models = ["unet", "dit"] if args.model == "both" else [args.model]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for name in models:
        for precision in precisions:
            for channels_last in [False, True] if (name == "unet" and args.channels_last) else [False]:
                model = UNet(shape, args.classes) if name == "unet" else DiT(shape, args.classes, patch=args.patch)
                bench(name, model, precision, args.batch, args.steps, args.warmup, channels_last, shape, args.classes)


if __name__ == "__main__":
    main()
