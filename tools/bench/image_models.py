#!/usr/bin/env python3
r"""Training throughput of the `unet` and `dit` models of plugins/models-image, in plain PyTorch.

The two networks below mirror plugins/models-image/unet.cpp and dit.cpp layer for layer: the same
widths and blocks, the same parameter and buffer names and shapes (a Pathline model.safetensors
loads into them, strictly), the same initialisation, and the same operations: attention on the
same [batch, heads, tokens, d] layout and by the same rule (`attention` below: the fused
scaled_dot_product_attention in float32, the explicit softmax in bfloat16 on the CPU), tanh-GELU, the time features as one addcmul and one sin. Their images/s is the bar the C++ models
must reach on the same machine and the same torch (the project's pinned one in .venv). One step is
what the engine does in training: a flow-matching loss on a batch (x_t = t x1 + (1 - t) x0,
target x1 - x0), backward, one AdamW step.

    .venv/bin/python tools/bench/image_models.py                    # both models, fp32 and bf16
    .venv/bin/python tools/bench/image_models.py --model dit --precision bf16 --steps 5
    .venv/bin/python tools/bench/image_models.py --model unet --channels-last

tools/bench/equivalence.py checks that these networks compute what Pathline's compute: it loads the
same weights into both and compares their velocities.

On a shared or virtualised machine wall time can vary several-fold between runs; each result line
is followed by the CPU time and page faults per step. Pathline keeps freed memory in the process
(glibc's mallopt, engine/src/build.cpp); to give this script the same, and OpenMP threads that sleep
instead of spinning at the end of parallel regions:

    OMP_WAIT_POLICY=passive \
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295:glibc.malloc.top_pad=67108864 \
    .venv/bin/python tools/bench/image_models.py
"""
import argparse
import json
import math
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def groups_for(channels):
    """The largest of 32, 16, ..., 1 that divides the channel count (GroupNorm needs a divisor)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)


def normalise(norm, x):
    """GroupNorm in the norm's own precision, as unet.cpp does: under CPU bfloat16 autocast the
    convolutions hand over bfloat16 activations, and the weights are float32."""
    return norm(x.to(norm.weight.dtype))


def conv(cin, cout, kernel, stride=1):
    """unet.cpp's make_conv: 'same' padding for odd kernels."""
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2)


def zeroed(layer):
    """A layer whose output starts at zero (the last of each residual branch, adaLN-Zero)."""
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class TimeFeatures:
    """image_model.hpp's TimeFeatures: sin(w_k t) and cos(w_k t) = sin(w_k t + pi / 2), w_k geometric
    from 1 to 1000, as one addcmul and one sin; the buffers time_freqs and time_phase belong to the
    model that owns the features, under those names."""

    def __init__(self, owner, features):
        half = features // 2
        w = torch.ones(1) if half == 1 else torch.logspace(0.0, 3.0, half)
        owner.register_buffer("time_freqs", torch.cat([w, w])[None])
        owner.register_buffer("time_phase", torch.cat([torch.zeros(half), torch.full((half,), math.pi / 2)])[None])
        self.owner = owner

    def __call__(self, t, batch):
        freqs, phase = self.owner.time_freqs, self.owner.time_phase
        features = torch.addcmul(phase, t.to(freqs.dtype).reshape(-1, 1), freqs).sin_()
        return features if features.shape[0] == batch else features.expand(batch, -1).contiguous()


# ------------------------------------------------------------------------------------------------
# U-Net (unet.cpp)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm, modulated by the embedding (scale, then shift) ->
    SiLU -> dropout -> conv3x3 (zero) -> plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, cin, cout, emb, dropout):
        super().__init__()
        self.out = cout
        self.dropout = dropout
        self.norm1 = nn.GroupNorm(groups_for(cin), cin)
        self.conv1 = conv(cin, cout, 3)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups_for(cout), cout)
        self.conv2 = zeroed(conv(cout, cout, 3))
        self.skip = conv(cin, cout, 1) if cin != cout else None

    def forward(self, x, e):
        h = self.conv1(F.silu(normalise(self.norm1, x)))
        film = self.film(e)[:, :, None, None]
        scale, shift = film[:, :self.out], film[:, self.out:]
        h = F.silu(torch.addcmul(shift, normalise(self.norm2, h), scale + 1))
        if self.dropout > 0:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


ATTENTION = "auto"  # --attention


def attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v, as image_model.hpp's attention() computes it: the fused kernel on a
    GPU and in float32; in bfloat16 on the CPU the weights formed explicitly, the softmax in float32
    (the fused kernel's bfloat16 backward is several times slower there). --attention fused or
    explicit forces one way for both precisions."""
    explicit = ATTENTION == "explicit" or (ATTENTION == "auto" and q.device.type == "cpu" and
                                           q.dtype == torch.bfloat16)
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return torch.softmax(scores, -1, dtype=torch.float32).to(v.dtype) @ v


class Attention(nn.Module):
    """Self-attention over the positions, plus the input. Head h's q, k and v are the qkv conv's
    channels [3 d h, 3 d h + d), [3 d h + d, 3 d h + 2 d), [3 d h + 2 d, 3 d (h + 1)) (unet.cpp)."""

    def __init__(self, channels, heads):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups_for(channels), channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = zeroed(conv(channels, channels, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        # [B, 3 C, H, W] -> [B, heads, T, 3 d]: each head's tokens, its q, k and v side by side.
        qkv = self.qkv(normalise(self.norm, x)).reshape(b, self.heads, 3 * d, h * w).transpose(2, 3)
        q, k, v = qkv.chunk(3, -1)
        out = attention(q, k, v)  # [B, heads, T, d]
        return x + self.proj(out.transpose(2, 3).reshape(b, c, h, w))


class UNet(nn.Module):
    """unet.cpp's UNetModel with its defaults; submodules under its names (down0_block0, mid_attention,
    up2_upsample, ...)."""

    def __init__(self, shape, num_classes, channels=32, mult=(1, 2, 2), num_res_blocks=1,
                 attention=(7,), heads=4, dropout=0.0, time_features=32):
        super().__init__()
        c_in, size = shape[0], shape[1]
        emb = 4 * channels
        self.time_features = TimeFeatures(self, time_features)
        self.time1 = nn.Linear(time_features, emb)
        self.time2 = nn.Linear(emb, emb)
        self.classes = nn.Embedding(num_classes + 1, emb) if num_classes else None
        ch = channels * mult[0]
        self.conv_in = conv(c_in, ch, 3)
        skips = [ch]  # widths of the skip connections, in push order

        # Per level: [(block, attention or None)], then the change of resolution or None.
        self.down_levels, self.up_levels = [], []
        for i, m in enumerate(mult):
            pairs = []
            for j in range(num_res_blocks):
                block = self.named(f"down{i}_block{j}", ResBlock(ch, channels * m, emb, dropout))
                ch = channels * m
                attend = self.named(f"down{i}_attention{j}", Attention(ch, heads)) if size in attention else None
                pairs.append((block, attend))
                skips.append(ch)
            resample = None
            if i + 1 < len(mult):
                resample = self.named(f"down{i}_downsample", conv(ch, ch, 3, stride=2))
                size //= 2
                skips.append(ch)
            self.down_levels.append((pairs, resample))

        self.mid_block1 = ResBlock(ch, ch, emb, dropout)
        self.mid_attention = Attention(ch, heads)
        self.mid_block2 = ResBlock(ch, ch, emb, dropout)

        # Going up, each level has one block more than going down: the extra one takes the skip the
        # downsampling conv (or, at the top, the input conv) left.
        for i in reversed(range(len(mult))):
            pairs = []
            for j in range(num_res_blocks + 1):
                block = self.named(f"up{i}_block{j}", ResBlock(ch + skips.pop(), channels * mult[i], emb, dropout))
                ch = channels * mult[i]
                attend = self.named(f"up{i}_attention{j}", Attention(ch, heads)) if size in attention else None
                pairs.append((block, attend))
            resample = None
            if i > 0:
                resample = self.named(f"up{i}_upsample", conv(ch, ch, 3))
                size *= 2
            self.up_levels.append((pairs, resample))

        self.norm_out = nn.GroupNorm(groups_for(ch), ch)
        self.conv_out = zeroed(conv(ch, c_in, 3))

    def named(self, name, module):
        """Registers `module` under Pathline's name for it and returns it."""
        self.add_module(name, module)
        return module

    def forward(self, x, t, labels=None):
        batch = x.shape[0]
        emb = self.time2(F.silu(self.time1(self.time_features(t, batch).to(x.dtype))))
        if self.classes is not None:
            emb = emb + self.classes(labels)
        e = F.silu(emb)  # every block's Linear reads SiLU(embedding)
        h = self.conv_in(x)
        skips = [h]
        for pairs, resample in self.down_levels:
            for block, attend in pairs:
                h = block(h, e)
                if attend is not None:
                    h = attend(h)
                skips.append(h)
            if resample is not None:
                h = resample(h)
                skips.append(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, e)), e)
        for pairs, resample in self.up_levels:
            for block, attend in pairs:
                h = block(torch.cat([h, skips.pop()], 1), e)
                if attend is not None:
                    h = attend(h)
            if resample is not None:
                h = resample(F.interpolate(h, scale_factor=2, mode="nearest"))
        h = self.conv_out(F.silu(normalise(self.norm_out, h)))
        return h.to(x.dtype)


# ------------------------------------------------------------------------------------------------
# DiT (dit.cpp)


def sincos_2d(hidden, rows, cols):
    """The fixed position of each token, [1, rows * cols, hidden], row-major: the first half of the
    features encode the row, the second the column, each as sin then cos of
    position * 10000^(-i / (hidden / 4))."""
    quarter = hidden // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)[:, None] * omega
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)[:, None] * omega
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], 1).float()[None]


def xavier(layer):
    """DiT's initialisation of the transformer's Linear layers: Xavier-uniform weights, zero biases."""
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def modulate(x, shift, scale):
    """x (1 + scale) + shift in one kernel."""
    return torch.addcmul(shift, x, scale + 1)


class DiTBlock(nn.Module):
    """x + gate1 attention(modulate(norm(x))), then + gate2 mlp(modulate(norm(.))); the six vectors
    from one zero-initialised Linear of SiLU(c)."""

    def __init__(self, hidden, heads, mlp_hidden):
        super().__init__()
        self.heads = heads
        self.qkv = xavier(nn.Linear(hidden, 3 * hidden))
        self.proj = xavier(nn.Linear(hidden, hidden))
        self.fc1 = xavier(nn.Linear(hidden, mlp_hidden))
        self.fc2 = xavier(nn.Linear(mlp_hidden, hidden))
        self.ada = zeroed(nn.Linear(hidden, 6 * hidden))

    def forward(self, x, c):
        b, n, dim = x.shape
        d = dim // self.heads
        mod = self.ada(c)[:, None].chunk(6, -1)  # each [B, 1, D]
        h = modulate(layer_norm(x), mod[0], mod[1])
        # [B, T, 3 D] -> [3, B, heads, T, d]: features are q, k, v, each heads x d.
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        attended = attention(q, k, v).transpose(1, 2).reshape(b, n, dim)
        y = torch.addcmul(x, mod[2], self.proj(attended))
        h = modulate(layer_norm(y), mod[3], mod[4])
        h = self.fc2(F.gelu(self.fc1(h), approximate="tanh"))
        return torch.addcmul(y, mod[5], h)


class DiT(nn.Module):
    """dit.cpp's DiTModel with its defaults (and a patch size); submodules under its names (block0,
    final_ada, ...)."""

    def __init__(self, shape, num_classes, patch=2, hidden=128, depth=6, heads=4, mlp_ratio=4.0,
                 time_features=256):
        super().__init__()
        c, h, w = shape
        self.shape, self.patch = shape, patch
        self.embed = nn.Conv2d(c, hidden, patch, stride=patch)
        nn.init.xavier_uniform_(self.embed.weight.view(hidden, -1))  # as a Linear on each flattened patch
        nn.init.zeros_(self.embed.bias)
        self.register_buffer("positions", sincos_2d(hidden, h // patch, w // patch))
        self.time_features = TimeFeatures(self, time_features)
        self.time1 = nn.Linear(time_features, hidden)
        self.time2 = nn.Linear(hidden, hidden)
        nn.init.normal_(self.time1.weight, 0.0, 0.02)
        nn.init.normal_(self.time2.weight, 0.0, 0.02)
        self.classes = nn.Embedding(num_classes + 1, hidden) if num_classes else None
        if self.classes is not None:
            nn.init.normal_(self.classes.weight, 0.0, 0.02)
        for i in range(depth):
            self.add_module(f"block{i}", DiTBlock(hidden, heads, round(hidden * mlp_ratio)))
        self.depth = depth
        self.final_ada = zeroed(nn.Linear(hidden, 2 * hidden))
        self.final = zeroed(nn.Linear(hidden, patch * patch * c))

    def forward(self, x, t, labels=None):
        b = x.shape[0]
        c_, h_, w_ = self.shape
        p = self.patch
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.positions
        cond = self.time2(F.silu(self.time1(self.time_features(t, b).to(x.dtype))))
        if self.classes is not None:
            cond = cond + self.classes(labels)
        cond = F.silu(cond)  # every adaLN Linear reads SiLU(c)
        for i in range(self.depth):
            tokens = getattr(self, f"block{i}")(tokens, cond)
        shift, scale = self.final_ada(cond)[:, None].chunk(2, -1)
        out = self.final(modulate(layer_norm(tokens), shift, scale))  # [B, T, p p C]
        # Unpatchify: token (r, s), feature (i, j, ch) -> pixel (ch, r p + i, s p + j).
        out = out.reshape(b, h_ // p, w_ // p, p, p, c_).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, c_, h_, w_).to(x.dtype)


# ------------------------------------------------------------------------------------------------


def build(name, shape, num_classes, patch):
    """The network `name` ("unet" or "dit") with the defaults of Pathline's model of that name."""
    return UNet(shape, num_classes) if name == "unet" else DiT(shape, num_classes, patch=patch)


def bench(name, model, precision, batch, steps, warmup, channels_last, shape, num_classes, as_json):
    """Times `steps` training steps after `warmup` untimed ones; prints the rate (JSON or a line)."""
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
        return loss.detach()

    for _ in range(warmup):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    params = sum(p.numel() for p in model.parameters())
    layout = " channels-last" if channels_last else ""
    if as_json:
        last = losses[-20:]
        print(json.dumps({"model": name, "precision": precision, "parameters": params, "batch": batch,
                          "images_per_s": batch * steps / seconds, "steps_per_s": steps / seconds,
                          "last_loss": float(sum(last) / len(last)), "channels_last": channels_last,
                          "peak_mb": after.ru_maxrss / 1024.0, "threads": torch.get_num_threads(),
                          "torch": torch.__version__}), flush=True)
        return
    print(f"{name:5s} {precision}{layout}: {params / 1e6:.3f}M parameters, {batch * steps / seconds:7.1f} images/s "
          f"({seconds / steps * 1000:.0f} ms/step, batch {batch}, {torch.get_num_threads()} threads)", flush=True)
    # On a busy or virtualised machine wall time varies a lot; CPU time and page faults (first
    # touches of freshly allocated memory, which the allocator returns to the system) say why.
    print(f"      per step: user {(after.ru_utime - before.ru_utime) / steps:.2f} s, "
          f"sys {(after.ru_stime - before.ru_stime) / steps:.2f} s, "
          f"minor page faults {(after.ru_minflt - before.ru_minflt) // steps}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["unet", "dit", "both"], default="both")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--channels-last", action="store_true",
                    help="also time the U-Net in channels-last (NHWC; the same weights, another layout)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--shape", type=int, nargs=3, default=[1, 28, 28], metavar=("C", "H", "W"))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--patch", type=int, default=2, help="the DiT's patch size")
    ap.add_argument("--attention", choices=["auto", "fused", "explicit"], default="auto",
                    help="auto: Pathline's rule (explicit softmax in bfloat16 on the CPU, else fused)")
    ap.add_argument("--json", action="store_true", help="one JSON object per measurement")
    args = ap.parse_args()
    global ATTENTION
    ATTENTION = args.attention
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = tuple(args.shape)
    models = ["unet", "dit"] if args.model == "both" else [args.model]
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for name in models:
        for precision in precisions:
            for channels_last in [False, True] if (name == "unet" and args.channels_last) else [False]:
                model = build(name, shape, args.classes, args.patch)
                bench(name, model, precision, args.batch, args.steps, args.warmup, channels_last, shape, args.classes,
                      args.json)


if __name__ == "__main__":
    main()
