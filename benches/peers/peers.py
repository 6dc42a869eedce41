"""The Python side of the CPU peer comparison (benches/peers/run.sh): PyTorch's eager
ATen kernels and JAX/XLA on the rows benches/peers.rs times in this crate, timed the
same way, written as CSV lines `case,dtype,impl,ms`.

    python benches/peers/peers.py OUT.csv [FILTER]

FILTER keeps the cases whose name contains it.

Each time is the median over 15 rounds of the mean of a batch of calls (as many as take
about 20 ms, at least one), after two warm-up calls. Inputs are standard normal (weights
around 1, biases around 0) of the same shapes and dtypes as the Rust side. PyTorch runs
with as many threads as the machine has cores; JAX's functions are jitted, and each call
waits for its result (`block_until_ready`). Backward is the gradient of x, the weight
and the bias given dy (PyTorch: `torch.autograd.grad` of a kept graph; JAX: the
function `jax.vjp` returns, jitted); forward+backward runs both from the inputs.
"""

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

EPS = 1e-5
GROUPS = 32

# (name, shape, parameter length), as benches/peers.rs lists them.
NORMS = [
    ("layer_norm", (4096, 768), 768),
    ("layer_norm", (2048, 4096), 4096),
    ("layer_norm", (1, 4096), 4096),
    ("rms_norm", (4096, 768), 768),
    ("rms_norm", (2048, 4096), 4096),
    ("rms_norm", (1, 4096), 4096),
    ("group_norm", (1, 320, 64, 64), 320),
    ("group_norm", (8, 128, 32, 32), 128),
    ("group_norm_channels_last", (1, 64, 64, 320), 320),
    ("group_norm_channels_last", (8, 32, 32, 128), 128),
    ("layer_norm_channels_first", (8, 96, 56, 56), 96),
    ("layer_norm_channels_first", (1, 256, 64, 64), 256),
    ("group_norm_silu", (1, 320, 64, 64), 320),
    ("group_norm_channels_last_silu", (1, 64, 64, 320), 320),
    ("batch_norm", (32, 64, 56, 56), 64),
    ("batch_norm", (256, 512, 7, 7), 512),
    ("batch_norm_eval", (32, 64, 56, 56), 64),
    ("batch_norm_eval", (256, 512, 7, 7), 512),
    ("instance_norm", (8, 64, 64, 64), 64),
    ("add_layer_norm", (2048, 4096), 4096),
]


def timed(f):
    """Median over 15 rounds of the mean time of a batch of `f` calls, in ms."""
    f()
    f()
    start = time.perf_counter()
    f()
    once = max(time.perf_counter() - start, 1e-6)
    batch = max(1, int(np.ceil(0.02 / once)))
    rounds = []
    for _ in range(15):
        start = time.perf_counter()
        for _ in range(batch):
            f()
        rounds.append((time.perf_counter() - start) * 1e3 / batch)
    return statistics.median(rounds)


# The norms in PyTorch, channels-first unless the name says otherwise; `extra` holds
# the running statistics (eval) or the residual (fused add). A name ending in "_silu"
# is the norm followed by SiLU, two ops.
def torch_forward(name, x, w, b, extra):
    if name.endswith("_silu"):
        return F.silu(torch_forward(name.removesuffix("_silu"), x, w, b, extra))
    if name == "layer_norm":
        return F.layer_norm(x, (x.shape[-1],), w, b, EPS)
    if name == "rms_norm":
        return F.rms_norm(x, (x.shape[-1],), w, EPS)
    if name == "layer_norm_channels_first":
        # timm's LayerNorm2d (ConvNeXt): channels moved last, F.layer_norm, moved back.
        return F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, EPS).permute(0, 3, 1, 2)
    if name == "group_norm":
        return F.group_norm(x, GROUPS, w, b, EPS)
    if name == "group_norm_channels_last":
        # [B, H, W, C] seen as NCHW in channels_last memory: the same bytes.
        return F.group_norm(x.permute(0, 3, 1, 2), GROUPS, w, b, EPS)
    if name == "batch_norm":
        return F.batch_norm(x, None, None, w, b, training=True, eps=EPS)
    if name == "batch_norm_eval":
        return F.batch_norm(x, extra[0], extra[1], w, b, training=False, eps=EPS)
    if name == "instance_norm":
        return F.instance_norm(x, weight=w, bias=b, eps=EPS)
    return F.layer_norm(x + extra[0], (x.shape[-1],), w, b, EPS)


def jax_forward(name):
    if name.endswith("_silu"):
        norm = jax_forward(name.removesuffix("_silu"))
        return lambda *args: jax.nn.silu(norm(*args))

    def stats_norm(x, axes, w, b, pshape):
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=axes, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + EPS) * w.astype(jnp.float32).reshape(pshape)
        return (y + b.astype(jnp.float32).reshape(pshape)).astype(x.dtype)

    def f(x, w, b, *extra):
        if name == "layer_norm":
            return stats_norm(x, (-1,), w, b, (-1,))
        if name == "layer_norm_channels_first":
            return stats_norm(x, (1,), w, b, (1, x.shape[1]) + (1,) * (x.ndim - 2))
        if name == "rms_norm":
            x32 = x.astype(jnp.float32)
            r = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + EPS)
            return (x32 * r * w.astype(jnp.float32)).astype(x.dtype)
        if name == "group_norm":
            B, C = x.shape[:2]
            g = x.reshape(B, GROUPS, -1)
            y = stats_norm(g, (2,), jnp.ones(()), jnp.zeros(()), ()).reshape(x.shape)
            pshape = (1, C) + (1,) * (x.ndim - 2)
            return (y.astype(jnp.float32) * w.reshape(pshape) + b.reshape(pshape)).astype(x.dtype)
        if name == "group_norm_channels_last":
            B, C = x.shape[0], x.shape[-1]
            g = x.reshape(B, -1, GROUPS, C // GROUPS)
            y = stats_norm(g, (1, 3), jnp.ones(()), jnp.zeros(()), ()).reshape(x.shape)
            return (y.astype(jnp.float32) * w + b).astype(x.dtype)
        if name in ("batch_norm", "instance_norm"):
            C = x.shape[1]
            axes = (0,) + tuple(range(2, x.ndim)) if name == "batch_norm" else tuple(range(2, x.ndim))
            return stats_norm(x, axes, w, b, (1, C) + (1,) * (x.ndim - 2))
        if name == "batch_norm_eval":
            C = x.shape[1]
            pshape = (1, C) + (1,) * (x.ndim - 2)
            m, v = extra[0].astype(jnp.float32).reshape(pshape), extra[1].astype(jnp.float32).reshape(pshape)
            y = (x.astype(jnp.float32) - m) * jax.lax.rsqrt(v + EPS) * w.astype(jnp.float32).reshape(pshape)
            return (y + b.astype(jnp.float32).reshape(pshape)).astype(x.dtype)
        return stats_norm(x + extra[0], (-1,), w, b, (-1,))

    return f


def rows(keep):
    rng = np.random.default_rng(0)
    torch.set_num_threads(os.cpu_count())
    for name, shape, p in NORMS:
        for dt in ("f32", "bf16"):
            case = f"{name} {'x'.join(map(str, shape))}"
            if keep not in case:
                continue
            tdt, jdt = (torch.float32, jnp.float32) if dt == "f32" else (torch.bfloat16, jnp.bfloat16)
            arrays = [rng.standard_normal(shape), 1 + 0.1 * rng.standard_normal(p), 0.1 * rng.standard_normal(p),
                      rng.standard_normal(shape)]
            if name == "batch_norm_eval":
                extra = [0.1 * rng.standard_normal(p), np.abs(1 + 0.1 * rng.standard_normal(p))]
            elif name == "add_layer_norm":
                extra = [rng.standard_normal(shape)]
            else:
                extra = []
            tx, tw, tb, tdy = (torch.tensor(a, dtype=tdt) for a in arrays)
            textra = [torch.tensor(a, dtype=tdt) for a in extra]
            yield case, dt, "PyTorch forward", timed(lambda: torch_forward(name, tx, tw, tb, textra))
            backward = name not in ("batch_norm_eval", "add_layer_norm")
            if backward:
                xs, ws, bs = (t.clone().requires_grad_() for t in (tx, tw, tb))
                # RMSNorm has no bias: its gradient is not asked for.
                ins = (xs, ws) if name == "rms_norm" else (xs, ws, bs)
                y = torch_forward(name, xs, ws, bs, textra)
                dy = tdy.permute(0, 3, 1, 2) if name.startswith("group_norm_channels_last") else tdy
                yield case, dt, "PyTorch backward", timed(
                    lambda: torch.autograd.grad(y, ins, dy, retain_graph=True))

                def fwd_bwd():
                    y = torch_forward(name, xs, ws, bs, textra)
                    torch.autograd.grad(y, ins, dy)

                yield case, dt, "PyTorch forward+backward", timed(fwd_bwd)
            jx, jw, jb, jdy = (jnp.asarray(a, dtype=jdt) for a in arrays)
            jextra = [jnp.asarray(a, dtype=jdt) for a in extra]
            f = jax_forward(name)
            jf = jax.jit(f)
            yield case, dt, "XLA forward", timed(lambda: jf(jx, jw, jb, *jextra).block_until_ready())
            if backward:
                _, vjp = jax.vjp(f, jx, jw, jb)
                jb_ = jax.jit(vjp)
                yield case, dt, "XLA backward", timed(lambda: jax.block_until_ready(jb_(jdy)))

                @jax.jit
                def jfb(x, w, b, dy):
                    _, v = jax.vjp(f, x, w, b)
                    return v(dy)

                yield case, dt, "XLA forward+backward", timed(lambda: jax.block_until_ready(jfb(jx, jw, jb, jdy)))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else None
    keep = sys.argv[2] if len(sys.argv) > 2 else ""
    lines = ["case,dtype,impl,ms"]
    for case, dt, impl, ms in rows(keep):
        print(f"{case} {dt} {impl}: {ms:.3f} ms", file=sys.stderr)
        lines.append(f"{case},{dt},{impl},{ms:.4f}")
    text = "\n".join(lines) + "\n"
    if out:
        with open(out, "w") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
