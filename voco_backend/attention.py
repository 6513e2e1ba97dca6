"""Window attention of the Swin blocks through PyTorch's fused attention, in training as well as inference.

MONAI's ``WindowAttention`` uses ``scaled_dot_product_attention`` only while autograd is off, so a training
step materialises every window's (n × n) attention matrix for each head, twice (scores and softmax), and keeps
them for backward: at stage 1 of a 64³ crop that is 125 windows · 3 heads · 343² floats per crop.

:class:`SDPAWindowAttention` computes the same function with the fused kernel in forward and a chunked
backward, so no step holds more than :data:`CHUNK_BYTES` of attention matrices at once (on a CPU
:data:`CPU_CHUNK_BYTES`, a few windows at a time, which keeps each chunk's passes in the cache). PyTorch's fused
CPU kernel cannot differentiate its additive mask, and the relative-position bias is a learnt parameter, hence the
hand-written backward (:class:`_WindowAttentionFunction`): it recomputes the softmax of a chunk of windows and
applies the standard attention gradients, summing the bias gradient over the windows.

The module keeps MONAI's parameter and buffer names (``qkv``, ``proj``, ``relative_position_bias_table``,
``relative_position_index``), so official state dicts load unchanged; :func:`use_sdpa_attention` swaps it into a
built network in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn

# The most memory one backward chunk's score matrices (scores, softmax, their gradients) may take.
CHUNK_BYTES = 64 * 2**20
# On a CPU, the chunk's size for the cache instead: a chunk's score matrices go through about a dozen matmul and
# elementwise passes, which run from the last-level cache when the chunk fits there and from memory when not.
CPU_CHUNK_BYTES = 32 * 2**20
# On a CPU, head widths below this take the transposed products in backward (see there).
NARROW_HEAD = 16
# A score low enough that its exp underflows to exactly 0 (no subnormal result), far from overflow in fp32.
UNDERFLOW = -1e4


class _WindowAttentionFunction(torch.autograd.Function):
    """softmax(q·kᵀ·scale + bias[h] + mask[w]) · v over windows; bias is differentiable, mask is not.

    Shapes: q, k, v (B, H, n, d) with B = crops · windows (window-minor, as MONAI partitions them); bias
    (H, n, n); mask (W, n, n) or None.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias, mask, scale):
        b, heads, n, d = q.shape
        if mask is None:
            # One additive mask for every window: broadcast over the batch. Contiguous, or the fused CPU kernel
            # is skipped for PyTorch's unfused one (the bias is a permuted view of the table).
            attn_mask = bias[None].to(q.dtype).contiguous()
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
        else:
            # Windows folded into the head axis, so the per-window mask broadcasts over the crops without
            # being copied once per crop.
            windows = mask.shape[0]
            crops = b // windows

            def fold(t: torch.Tensor) -> torch.Tensor:
                return t.reshape(crops, windows * heads, n, d)

            # The (windows · heads · n²) sum is written once, in the kernel's dtype, from a contiguous bias (a
            # permuted one gives the sum its strides, and the reshape then copies it again). In bf16 only the
            # masked entries round differently (±0.5 at -100), whose exp is 0 to fp32's resolution either way.
            bias_q, mask_q = bias.to(q.dtype).contiguous(), mask.to(q.dtype)
            attn_mask = (bias_q[None] + mask_q[:, None]).reshape(1, windows * heads, n, n)
            out = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), attn_mask=attn_mask, scale=scale)
            out = out.reshape(b, heads, n, d)
        ctx.save_for_backward(q, k, v, out, bias, mask)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, bias, mask = ctx.saved_tensors
        scale = ctx.scale
        b, heads, n, d = q.shape
        work = torch.promote_types(q.dtype, torch.float32)
        q, k, v, grad_out = (t.contiguous() for t in (q, k, v, grad_out))
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        grad_bias = torch.zeros((heads, n, n), dtype=work, device=q.device)
        bias_w = bias.to(work).contiguous()  # the table's permuted view: a strided add per chunk otherwise
        # Σ_j P_ij·dP_ij = dO_i·O_i: the softmax backward's row term from the (n × d) output, not an (n × n) pass.
        rows_term = (grad_out.to(work) * out.to(work)).sum(-1, keepdim=True)
        budget = CPU_CHUNK_BYTES if q.device.type == "cpu" else CHUNK_BYTES
        chunk = max(1, budget // (3 * heads * n * n * torch.finfo(work).bits // 8))
        # With heads as narrow as a tiny model's (d = 4), a CPU's batched matmul of an (n × n) matrix with an
        # (n × d) one runs several times faster when the latter is a (d × n) row-major copy (dVᵀ = dOᵀ·P, dKᵀ = Qᵀ·dS,
        # dQ = dS·(Kᵀ)ᵀ): the tiny model's attention backward takes a third less time. At B's d = 16 it gains
        # nothing (benchmarks/attention_speed.py), so wider heads, and other devices, keep the plain products.
        narrow = d < NARROW_HEAD and q.device.type == "cpu"
        for start in range(0, b, chunk):
            rows = slice(start, min(b, start + chunk))
            qc, kc, vc, gc = (t[rows].to(work) for t in (q, k, v, grad_out))
            scores = torch.matmul(qc * scale, kc.transpose(-2, -1)).add_(bias_w)
            if mask is not None:
                windows = torch.arange(rows.start, rows.stop, device=q.device) % mask.shape[0]
                # MONAI's shifted-window mask adds -100 between tokens of different regions. exp(-100) is a
                # subnormal float, which a CPU's vectorised exp computes about 20 times slower than a normal one:
                # half the time of a masked block's backward. Against each row's unmasked entries (its diagonal
                # never is) that term is far below fp32's resolution, so backward takes those entries to where exp
                # is exactly 0: same gradients. Set in place on this chunk's gathered copy of the mask.
                mask_c = mask[windows].to(work)
                scores.add_(mask_c.masked_fill_(mask_c < 0, UNDERFLOW)[:, None])
            probs = torch.softmax(scores, dim=-1)
            del scores
            if narrow:
                g_t, k_t, q_t = (t.transpose(-2, -1).contiguous() for t in (gc, kc, qc))
                grad_v[rows] = torch.matmul(g_t, probs).transpose(-2, -1)  # dVᵀ = dOᵀ·P
            else:
                grad_v[rows] = torch.matmul(probs.transpose(-2, -1), gc)
            # Softmax backward: dS = P ⊙ (dP − Σ_j P·dP), with dP = dO·Vᵀ.
            grad_scores = probs.mul_(torch.matmul(gc, vc.transpose(-2, -1)).sub_(rows_term[rows]))
            grad_bias += grad_scores.sum(0)
            if narrow:
                grad_q[rows] = torch.matmul(grad_scores, k_t.transpose(-2, -1)).mul_(scale)
                grad_k[rows] = torch.matmul(q_t, grad_scores).mul_(scale).transpose(-2, -1)  # dKᵀ = Qᵀ·dS
            else:
                grad_q[rows] = torch.matmul(grad_scores, kc).mul_(scale)
                grad_k[rows] = torch.matmul(grad_scores.transpose(-2, -1), qc).mul_(scale)
        return grad_q, grad_k, grad_v, grad_bias.to(bias.dtype), None, None


class SDPAWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` (same parameters, same function) through the fused attention kernel."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention within each window of ``x`` (B, n, C); ``mask`` (W, n, n) for shifted windows."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            mask = mask.to(device=q.device)
        out = _WindowAttentionFunction.apply(q, k, v, bias, mask, self.scale)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


def use_sdpa_attention(model: nn.Module) -> int:
    """Turn every MONAI ``WindowAttention`` in ``model`` into :class:`SDPAWindowAttention`, in place.

    Parameters, buffers and their names are untouched (the class changes, not the state), so weights load
    the same before and after. Returns how many modules were switched. Attention dropout is not supported by
    the fused path; MONAI's SwinUNETR builds it with rate 0.
    """
    switched = 0
    for module in model.modules():
        if type(module) is WindowAttention:
            if module.attn_drop.p:
                raise ValueError("SDPA window attention needs attn_drop 0")
            module.__class__ = SDPAWindowAttention
            switched += 1
    return switched
