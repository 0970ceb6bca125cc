"""PyTorch ports of Pathline's built-in models `mlp`, `unet` and `dit`.

Written from docs/weights.md ("The models' forward passes") alone: the module names, tensor shapes
and forward passes are the ones that page specifies, so that a run's `model.safetensors` loads
with `load_state_dict(strict=True)` and the port reproduces Pathline's outputs to float32 rounding.
Needs torch, NumPy and the standard library only (Python 3.11+ for tomllib).

Example::

    import pathline_ports

    model = pathline_ports.load_run("runs/quickstart")   # eval mode, float32, strict load
    x = torch.randn(8, 2)
    v = model(x, torch.full((8,), 0.5))                   # the velocity, for a velocity run
    v = model(x, torch.tensor(0.5))                       # one time for the whole batch
"""

import json
import math
import os
import struct
import tomllib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Mlp", "UNet", "DiT", "build_model", "load_run", "read_safetensors"]

# ------------------------------------------------------------------------------------------------
# Files

# safetensors dtype -> NumPy dtype. NumPy has no bfloat16: BF16 comes back as raw uint16.
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "C64": "<c8",
          "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def read_safetensors(path):
    """Returns ({name: array}, metadata) for the safetensors file at `path` (docs/weights.md)."""
    with open(path, "rb") as f:
        raw = f.read()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len].decode("utf-8"))
    data = memoryview(raw)[8 + header_len:]
    metadata = header.pop("__metadata__", {})
    arrays = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        flat = np.frombuffer(data[begin:end], dtype=DTYPES[info["dtype"]])
        arrays[name] = flat.reshape(info["shape"]).copy()  # copy: frombuffer is read-only
    return arrays, metadata


def to_state_dict(arrays):
    """NumPy arrays -> tensors; BF16 (read as uint16) keeps its bits."""
    state = {}
    for name, array in arrays.items():
        if array.dtype == np.uint16:
            state[name] = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
        else:
            state[name] = torch.from_numpy(array)
    return state


# ------------------------------------------------------------------------------------------------
# Shared pieces ("What every model shares")

def time_buffers(features):
    """freqs and phase, each [1, F]: w_k = logspace(0, 3, F/2) twice; F/2 zeros then F/2 x pi/2."""
    half = features // 2
    w = torch.ones(1) if half == 1 else torch.logspace(0.0, 3.0, half)
    freqs = torch.cat([w, w]).unsqueeze(0)
    phase = torch.cat([torch.zeros(half), torch.full((half,), math.pi / 2)]).unsqueeze(0)
    return freqs, phase


def time_features(t, freqs, phase, batch):
    """[sin(w t), cos(w t)] in the buffers' dtype: one addcmul (one rounding), then sin."""
    f = torch.addcmul(phase, t.to(freqs.dtype).reshape(-1, 1), freqs).sin()
    return f if f.shape[0] == batch else f.expand(batch, -1)


def class_rows(labels, batch, num_classes, device):
    """Embedding rows: class k is row k; a negative label (the null label -1) or none is row K."""
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.int64, device=device)
    labels = torch.as_tensor(labels).to(device=device, dtype=torch.int64)
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"{labels.numel()} labels for a batch of {batch} samples")
    if batch > 0 and int(labels.max()) >= num_classes:
        raise ValueError(f"a label is {int(labels.max())}; the model has classes 0 to {num_classes - 1} "
                         "(and the null label -1)")
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels)


def modulate(x, shift, scale):
    """x (1 + scale) + shift, one addcmul as in Pathline."""
    return torch.addcmul(shift, x, scale + 1)


# ------------------------------------------------------------------------------------------------
# mlp

ACTIVATIONS = {"silu": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}  # gelu: exact erf


class Mlp(nn.Module):
    """Pathline's `mlp`: Linear/activation layers on cat(flattened x, time features, class row)."""

    def __init__(self, dim, num_classes=0, width=256, depth=4, activation="silu", time_embedding=32,
                 class_embedding=32):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"mlp: unknown activation '{activation}' (one of {', '.join(ACTIVATIONS)})")
        self.num_classes = num_classes
        self.time_embedding = time_embedding
        if time_embedding > 0:
            freqs, phase = time_buffers(time_embedding)
            self.register_buffer("freqs", freqs)
            self.register_buffer("phase", phase)
        class_width = class_embedding if num_classes > 0 else 0
        width_in = dim + (time_embedding if time_embedding > 0 else 1) + class_width
        layers = []
        for i in range(depth):
            layers += [nn.Linear(width_in if i == 0 else width, width), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)
        if num_classes > 0:
            self.classes = nn.Embedding(num_classes + 1, class_embedding)

    def forward(self, x, t, labels=None):
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if self.time_embedding > 0:
            features = time_features(t, self.freqs, self.phase, batch)
        else:
            features = t.to(x.dtype).reshape(-1, 1).expand(batch, -1)
        parts = [x.flatten(1), features]
        if self.num_classes > 0:
            rows = class_rows(labels, batch, self.num_classes, x.device)
            parts.append(self.classes(rows).to(x.dtype))
        return self.net(torch.cat(parts, 1)).reshape(x.shape)


# ------------------------------------------------------------------------------------------------
# unet

def groups_for(channels):
    """The first of 32, 16, 8, 4, 2 that divides the channels, else 1."""
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0:
            return g
    return 1


def group_norm(channels):
    return nn.GroupNorm(groups_for(channels), channels, eps=1e-5)


def conv(channels_in, channels_out, kernel, stride=1):
    return nn.Conv2d(channels_in, channels_out, kernel, stride=stride, padding=kernel // 2)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv3x3, GroupNorm with FiLM (scale, then shift), SiLU, dropout, conv3x3, + skip."""

    def __init__(self, channels_in, channels_out, embedding, dropout):
        super().__init__()
        self.channels_out = channels_out
        self.dropout = dropout
        self.norm1 = group_norm(channels_in)
        self.conv1 = conv(channels_in, channels_out, 3)
        self.film = nn.Linear(embedding, 2 * channels_out)
        self.norm2 = group_norm(channels_out)
        self.conv2 = conv(channels_out, channels_out, 3)
        self.skip = conv(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x, e):
        h = self.conv1(F.silu(self.norm1(x)))
        film = self.film(e)[:, :, None, None]
        scale, shift = film[:, :self.channels_out], film[:, self.channels_out:]
        h = F.silu(torch.addcmul(shift, self.norm2(h), scale + 1))
        h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h)
        return (self.skip(x) if self.skip is not None else x) + h


class Attention(nn.Module):
    """GroupNorm, 1x1 conv to qkv (grouped by head, then q, k, v), attention, 1x1 conv, + input."""

    def __init__(self, channels, heads):
        super().__init__()
        if channels % heads != 0:
            raise ValueError(f"unet: {channels} channels are not divisible by heads = {heads}")
        self.channels = channels
        self.heads = heads
        self.norm = group_norm(channels)
        self.qkv = conv(channels, 3 * channels, 1)
        self.proj = conv(channels, channels, 1)

    def forward(self, x):
        batch, _, height, width = x.shape
        d = self.channels // self.heads
        qkv = self.qkv(self.norm(x)).reshape(batch, self.heads, 3 * d, height * width).transpose(2, 3)
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(2, 3).reshape(batch, self.channels, height, width))


class UNet(nn.Module):
    """Pathline's `unet` on images [C, H, W]; module names as in docs/weights.md."""

    def __init__(self, data_shape, num_classes=0, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                 attention_resolutions=(7,), heads=4, dropout=0.0, time_embedding=32, embedding=0,
                 channels_last=False):
        super().__init__()
        del channels_last  # memory layout only
        if len(data_shape) != 3:
            raise ValueError(f"unet: needs images [C, H, W], got the sample shape {list(data_shape)}")
        image_channels, height, width = data_shape
        levels = len(channel_mult)
        factor = 2 ** (levels - 1)
        if height % factor or width % factor:
            raise ValueError(f"unet: the image size {height}x{width} is not divisible by {factor}")
        embedding = embedding if embedding > 0 else 4 * channels
        self.num_classes = num_classes
        self.levels = levels
        self.num_res_blocks = num_res_blocks

        freqs, phase = time_buffers(time_embedding)
        self.register_buffer("time_freqs", freqs)
        self.register_buffer("time_phase", phase)
        self.time1 = nn.Linear(time_embedding, embedding)
        self.time2 = nn.Linear(embedding, embedding)
        if num_classes > 0:
            self.classes = nn.Embedding(num_classes + 1, embedding)

        # Which levels attend: the level's feature-map height is listed.
        self.attends = [(height >> i) in attention_resolutions for i in range(levels)]

        ch = channels * channel_mult[0]
        self.conv_in = conv(image_channels, ch, 3)
        skips = [ch]
        for i in range(levels):
            for j in range(num_res_blocks):
                out = channels * channel_mult[i]
                self.add_module(f"down{i}_block{j}", ResBlock(ch, out, embedding, dropout))
                ch = out
                if self.attends[i]:
                    self.add_module(f"down{i}_attention{j}", Attention(ch, heads))
                skips.append(ch)
            if i + 1 < levels:
                self.add_module(f"down{i}_downsample", conv(ch, ch, 3, 2))
                skips.append(ch)

        self.mid_block1 = ResBlock(ch, ch, embedding, dropout)
        self.mid_attention = Attention(ch, heads)
        self.mid_block2 = ResBlock(ch, ch, embedding, dropout)

        for i in reversed(range(levels)):
            for j in range(num_res_blocks + 1):
                out = channels * channel_mult[i]
                self.add_module(f"up{i}_block{j}", ResBlock(ch + skips.pop(), out, embedding, dropout))
                ch = out
                if self.attends[i]:
                    self.add_module(f"up{i}_attention{j}", Attention(ch, heads))
            if i > 0:
                self.add_module(f"up{i}_upsample", conv(ch, ch, 3))

        self.norm_out = group_norm(ch)
        self.conv_out = conv(ch, image_channels, 3)

    def forward(self, x, t, labels=None):
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        emb = self.time2(F.silu(self.time1(time_features(t, self.time_freqs, self.time_phase, batch).to(x.dtype))))
        if self.num_classes > 0:
            emb = emb + self.classes(class_rows(labels, batch, self.num_classes, x.device))
        e = F.silu(emb)

        h = self.conv_in(x)
        skips = [h]
        for i in range(self.levels):
            for j in range(self.num_res_blocks):
                h = getattr(self, f"down{i}_block{j}")(h, e)
                if self.attends[i]:
                    h = getattr(self, f"down{i}_attention{j}")(h)
                skips.append(h)
            if i + 1 < self.levels:
                h = getattr(self, f"down{i}_downsample")(h)
                skips.append(h)
        h = self.mid_block2(self.mid_attention(self.mid_block1(h, e)), e)
        for i in reversed(range(self.levels)):
            for j in range(self.num_res_blocks + 1):
                h = getattr(self, f"up{i}_block{j}")(torch.cat([h, skips.pop()], 1), e)
                if self.attends[i]:
                    h = getattr(self, f"up{i}_attention{j}")(h)
            if i > 0:
                h = F.interpolate(h, size=(2 * h.shape[2], 2 * h.shape[3]), mode="nearest")
                h = getattr(self, f"up{i}_upsample")(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ------------------------------------------------------------------------------------------------
# dit

def sincos_positions(hidden, rows, cols):
    """[1, rows cols, hidden]: per token (r, s), row-major, [sin(r w), cos(r w), sin(s w), cos(s w)]."""
    quarter = hidden // 4
    omega = torch.pow(10000.0, -torch.arange(quarter, dtype=torch.float64) / quarter)
    r = torch.arange(rows, dtype=torch.float64).repeat_interleave(cols)[:, None] * omega
    c = torch.arange(cols, dtype=torch.float64).repeat(rows)[:, None] * omega
    return torch.cat([r.sin(), r.cos(), c.sin(), c.cos()], 1).float().unsqueeze(0)


def layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


class Block(nn.Module):
    """adaLN-Zero transformer block: six modulation vectors (shift, scale, gate) x (attention, MLP)."""

    def __init__(self, hidden, heads, mlp_hidden):
        super().__init__()
        self.hidden = hidden
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.fc1 = nn.Linear(hidden, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden)
        self.ada = nn.Linear(hidden, 6 * hidden)

    def forward(self, x, c):
        batch, tokens, _ = x.shape
        d = self.hidden // self.heads
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)[:, None, :].chunk(6, dim=-1)
        h = modulate(layer_norm(x), shift1, scale1)
        qkv = self.qkv(h).reshape(batch, tokens, 3, self.heads, d).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(batch, tokens,
                                                                                          self.hidden)
        y = torch.addcmul(x, gate1, self.proj(a))
        h = modulate(layer_norm(y), shift2, scale2)
        h = self.fc2(F.gelu(self.fc1(h), approximate="tanh"))
        return torch.addcmul(y, gate2, h)


class DiT(nn.Module):
    """Pathline's `dit` on images [C, H, W]; module names as in docs/weights.md."""

    def __init__(self, data_shape, num_classes=0, patch_size=2, hidden=128, depth=6, heads=4, mlp_ratio=4.0,
                 time_embedding=256):
        super().__init__()
        if len(data_shape) != 3:
            raise ValueError(f"dit: needs images [C, H, W], got the sample shape {list(data_shape)}")
        channels, height, width = data_shape
        if height % patch_size or width % patch_size:
            raise ValueError(f"dit: the image size {height}x{width} is not divisible by patch_size = {patch_size}")
        if hidden % 4 or hidden % heads:
            raise ValueError(f"dit: hidden = {hidden} must be a multiple of 4 and of heads = {heads}")
        # Halves round away from zero, as C's llround (Python's round would round them to even).
        mlp_hidden = int(math.floor(hidden * mlp_ratio + 0.5))
        self.num_classes = num_classes
        self.patch = patch_size
        self.channels = channels
        self.embed = nn.Conv2d(channels, hidden, patch_size, stride=patch_size)
        self.register_buffer("positions", sincos_positions(hidden, height // patch_size, width // patch_size))
        freqs, phase = time_buffers(time_embedding)
        self.register_buffer("time_freqs", freqs)
        self.register_buffer("time_phase", phase)
        self.time1 = nn.Linear(time_embedding, hidden)
        self.time2 = nn.Linear(hidden, hidden)
        if num_classes > 0:
            self.classes = nn.Embedding(num_classes + 1, hidden)
        self.depth = depth
        for i in range(depth):
            self.add_module(f"block{i}", Block(hidden, heads, mlp_hidden))
        self.final_ada = nn.Linear(hidden, 2 * hidden)
        self.final = nn.Linear(hidden, patch_size * patch_size * channels)

    def forward(self, x, t, labels=None):
        batch, channels, height, width = x.shape
        p = self.patch
        rows, cols = height // p, width // p
        t = torch.as_tensor(t, device=x.device)
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.positions
        c = self.time2(F.silu(self.time1(time_features(t, self.time_freqs, self.time_phase, batch).to(x.dtype))))
        if self.num_classes > 0:
            c = c + self.classes(class_rows(labels, batch, self.num_classes, x.device))
        c = F.silu(c)
        for i in range(self.depth):
            tokens = getattr(self, f"block{i}")(tokens, c)
        shift, scale = self.final_ada(c)[:, None, :].chunk(2, dim=-1)
        out = self.final(modulate(layer_norm(tokens), shift, scale))
        out = out.reshape(batch, rows, cols, p, p, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, channels, rows * p, cols * p)


# ------------------------------------------------------------------------------------------------
# Building from a run

PARAMS = {
    "mlp": {"width", "depth", "activation", "time_embedding", "class_embedding"},
    "unet": {"channels", "channel_mult", "num_res_blocks", "attention_resolutions", "heads", "dropout",
             "time_embedding", "embedding", "channels_last"},
    "dit": {"patch_size", "hidden", "depth", "heads", "mlp_ratio", "time_embedding"},
}


def build_model(model_table, data_shape, num_classes=0):
    """The port of a `[model]` table ({"type": ..., key: value}) for samples shaped `data_shape`."""
    params = dict(model_table)
    kind = params.pop("type", None)
    if kind not in PARAMS:
        raise ValueError(f"[model] type = {kind!r}: the ports are of 'mlp', 'unet' and 'dit'")
    unknown = sorted(set(params) - PARAMS[kind])
    if unknown:
        raise ValueError(f"[model] type = '{kind}': keys {unknown} are not in docs/weights.md's {kind}; "
                         "the port is older than the model")
    if kind == "mlp":
        return Mlp(int(np.prod(data_shape)), num_classes, **params)
    if kind == "unet":
        return UNet(tuple(data_shape), num_classes, **params)
    return DiT(tuple(data_shape), num_classes, **params)


def npy_shape(path):
    return tuple(np.load(path, mmap_mode="r").shape)


def run_data_shape(run_dir, config, arrays):
    """One sample's shape: the mlp's from its output layer, else samples.npy's, else the data set's."""
    model = config["model"]
    if model["type"] == "mlp":
        depth = model.get("depth", 4)
        return (arrays[f"net.{2 * depth}.weight"].shape[0],)
    samples = os.path.join(run_dir, "samples.npy")
    if os.path.exists(samples):
        return npy_shape(samples)[1:]
    dataset = config.get("dataset", {})
    if dataset.get("type") == "fashion_mnist":
        return (1, 28, 28)
    if dataset.get("type") == "image_folder":
        size = dataset.get("size", 32)
        return (dataset.get("channels", 3), size, size)
    raise ValueError(f"{run_dir}: cannot tell the sample shape of [dataset] type = {dataset.get('type')!r} "
                     "(no samples.npy); pass data_shape=(C, H, W)")


def load_run(run_dir, data_shape=None, weights=None):
    """The port of a run's model with its `model.safetensors` (or `weights`) loaded strictly, in eval mode."""
    with open(os.path.join(run_dir, "config.toml"), "rb") as f:
        config = tomllib.load(f)
    arrays, _ = read_safetensors(weights or os.path.join(run_dir, "model.safetensors"))
    num_classes = arrays["classes.weight"].shape[0] - 1 if "classes.weight" in arrays else 0
    shape = tuple(data_shape) if data_shape is not None else run_data_shape(run_dir, config, arrays)
    model = build_model(config["model"], shape, num_classes)
    model.load_state_dict(to_state_dict(arrays), strict=True)
    return model.float().eval()
