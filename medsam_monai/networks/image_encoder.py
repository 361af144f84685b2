"""SAM's ViT image encoder: 1024x1024 image -> (B, 256, 64, 64) embedding.

Parameter names follow ``segment_anything.modeling.image_encoder`` so the original checkpoints load
with strict matching. Attention runs through ``scaled_dot_product_attention`` with SAM's decomposed
relative position bias, in chunks so that at most one bounded block of the bias exists at a time.
The model works with autograd on and off: inference on CPU takes a faster buffer-reusing path, and
anything autograd records takes the differentiable SDPA path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d, MLPBlock

# Upper bounds, in elements, of the attention bias that exists at one time. CPU: 8 MB at fp32,
# 512 queries of a 4096-token global head, sized to stay in cache. SDPA: 256 MB at fp32, four
# global heads at 1024x1024.
_CPU_CHUNK_ELEMENTS = 2 * 1024 * 1024
_SDPA_CHUNK_ELEMENTS = 4 * 4096 * 4096


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative positional embeddings for every (query, key) pair along one axis.

    Args:
        q_size: number of query positions along the axis.
        k_size: number of key positions along the axis.
        rel_pos: (L, head_dim) table; linearly resized when L != 2 * max(q_size, k_size) - 1.

    Returns:
        (q_size, k_size, head_dim) embeddings.
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear")
        rel_pos = rel_pos.reshape(-1, max_rel_dist).permute(1, 0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos[relative_coords.long()]


def decomposed_rel_pos_terms(
    q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two factors of SAM's decomposed relative position bias.

    Args:
        q: (N, H*W, head_dim) unscaled queries.
        rel_pos_h, rel_pos_w: the block's relative position tables.
        size: (H, W) of the token grid (queries and keys share it).

    Returns:
        rel_h (N, H, W, H) and rel_w (N, H, W, W); the bias of query (y, x) for key (ky, kx) is
        ``rel_h[..., y, x, ky] + rel_w[..., y, x, kx]``.
    """
    h, w = size
    r_q = q.reshape(q.shape[0], h, w, q.shape[-1])
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h).to(q.dtype))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w).to(q.dtype))
    return rel_h, rel_w


def attention_with_rel_pos(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + bias) v with the decomposed relative position bias.

    The original builds the (L, L) bias and scores for all heads at once (3.2 GB at 1024x1024).
    Here they exist for a bounded chunk at a time. On CUDA each chunk of heads goes through
    ``scaled_dot_product_attention``, whose fused kernels take the bias. On CPU those kernels
    measure two (fp32) to five (bf16) times slower than plain matmuls for inference, so there the
    chunk is computed in one reused buffer (:func:`_cpu_attention_in_buffer`). That path writes with
    ``out=`` arguments, which autograd refuses, so whenever autograd records (grad mode on and an
    input requires grad: training, or gradients with respect to the image) every device takes the
    SDPA path, which computes the same values and is differentiable.

    Args:
        q, k, v: (N, L, head_dim) with L = H * W.
        rel_h, rel_w: (N, H, W, H) and (N, H, W, W) from :func:`decomposed_rel_pos_terms`.

    Returns:
        (N, L, head_dim).
    """
    if q.device.type != "cpu" or _autograd_records(q, k, v, rel_h, rel_w):
        return _sdpa_with_rel_pos(q, k, v, rel_h, rel_w)
    return _cpu_attention_in_buffer(q, k, v, rel_h, rel_w)


def _autograd_records(*tensors: torch.Tensor) -> bool:
    """True when autograd would record an op on ``tensors`` (grad mode on, one of them requires grad)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _cpu_attention_in_buffer(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """Inference-only CPU attention: a chunk of heads and query rows at a time, in one reused buffer.

    Each chunk, a few rows of queries small enough to stay in cache, goes bias, scores, softmax,
    then one matmul with v, all written in place. Not differentiable (``out=`` writes). Shapes as
    :func:`attention_with_rel_pos`: q, k, v (N, L, head_dim), rel_h (N, H, W, H), rel_w (N, H, W, W)
    -> (N, L, head_dim).
    """
    n, length, head_dim = q.shape
    _, h, w, _ = rel_h.shape
    if length * length <= _CPU_CHUNK_ELEMENTS:
        heads_per_chunk, rows_per_chunk = _CPU_CHUNK_ELEMENTS // (length * length), h
    else:
        heads_per_chunk, rows_per_chunk = 1, max(1, _CPU_CHUNK_ELEMENTS // (w * length))
    buffer = q.new_empty(heads_per_chunk * rows_per_chunk * w * length)
    out = torch.empty_like(q)
    for head0 in range(0, n, heads_per_chunk):
        heads = slice(head0, head0 + heads_per_chunk)
        # Contiguous once per chunk: bf16 matmuls would otherwise copy the transposed keys per row chunk.
        k_t = k[heads].transpose(-2, -1).contiguous()
        for row0 in range(0, h, rows_per_chunk):
            rows = slice(row0, row0 + rows_per_chunk)
            queries = slice(row0 * w, (row0 + rows_per_chunk) * w)
            rel_h_part, rel_w_part = rel_h[heads, rows], rel_w[heads, rows]
            chunk_heads, chunk_rows = rel_h_part.shape[:2]
            scores = buffer[: chunk_heads * chunk_rows * w * length].view(chunk_heads, chunk_rows, w, h, w)
            torch.add(rel_h_part[..., :, None], rel_w_part[..., None, :], out=scores)
            scores = scores.view(chunk_heads, chunk_rows * w, length)
            scores.baddbmm_(q[heads, queries], k_t, alpha=head_dim**-0.5)
            torch.bmm(torch.softmax(scores, dim=-1, out=scores), v[heads], out=out[heads, queries])
    return out


def _sdpa_with_rel_pos(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor
) -> torch.Tensor:
    """Differentiable attention through ``scaled_dot_product_attention``, a bounded chunk of heads at a time.

    Shapes as :func:`attention_with_rel_pos`: q, k, v (N, L, head_dim), rel_h (N, H, W, H), rel_w
    (N, H, W, W) -> (N, L, head_dim). Under autograd the chunks' biases are kept for the backward
    pass, so the chunking bounds the transient memory of inference only.
    """
    n, length, _ = q.shape
    chunk = max(1, _SDPA_CHUNK_ELEMENTS // (length * length))
    if chunk >= n:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_expand_bias(rel_h, rel_w))
    # Concatenated rather than written into a preallocated tensor, so autograd sees plain ops.
    return torch.cat(
        [
            F.scaled_dot_product_attention(q[part], k[part], v[part], attn_mask=_expand_bias(rel_h[part], rel_w[part]))
            for part in (slice(start, start + chunk) for start in range(0, n, chunk))
        ]
    )


def _expand_bias(rel_h: torch.Tensor, rel_w: torch.Tensor) -> torch.Tensor:
    """(N, H, W, H) and (N, H, W, W) -> (N, H*W, H*W) additive attention bias."""
    n, h, w, _ = rel_h.shape
    return (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(n, h * w, h * w)


class Attention(nn.Module):
    """Multi-head self-attention with SAM's decomposed relative position bias."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """
        Args:
            dim: channels of the tokens.
            num_heads: attention heads.
            qkv_bias: add a learnable bias to query, key and value.
            use_rel_pos: add the decomposed relative position bias.
            input_size: (H, W) token grid the relative position tables are sized for.
        """
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos is True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, self.head_dim))

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Attention over token grids, before the output projection.

        Args:
            qkv: (B, H, W, 3 * dim) output of ``self.qkv``.

        Returns:
            (B, H, W, dim), to be passed through ``self.proj``.
        """
        b, h, w, _ = qkv.shape
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, h * w, self.head_dim).unbind(0)
        if self.use_rel_pos:
            rel_h, rel_w = decomposed_rel_pos_terms(q, self.rel_pos_h, self.rel_pos_w, (h, w))
            x = attention_with_rel_pos(q, k, v, rel_h, rel_w)
        else:
            x = F.scaled_dot_product_attention(q, k, v)
        return x.view(b, self.num_heads, h, w, self.head_dim).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        return self.proj(self.attend(self.qkv(x)))


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * num_windows, window_size, window_size, C), padding H and W with zeros."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`, dropping the padding: -> (B, H, W, C)."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // (hp * wp // window_size // window_size)
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    # Contiguous: a linear layer on the cropped view would broadcast its weight per row (slow in bf16).
    return x[:, :h, :w, :].contiguous()


class Block(nn.Module):
    """Transformer block with windowed (``window_size > 0``) or global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(
            dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            use_rel_pos=use_rel_pos,
            input_size=input_size if window_size == 0 else (window_size, window_size),
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        x = x + self._attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size == 0:
            return self.attn(x)
        # The original pads the normalised tokens with zeros and then projects them. A zero token
        # projects to the qkv bias, so project the real tokens only and pad with the bias; and the
        # output projection is per token, so it runs after the padding is dropped. Same result,
        # about 16% fewer FLOPs in these layers at 1024x1024.
        _, h, w, _ = x.shape
        qkv = self.attn.qkv(x)
        windows, pad_hw = window_partition(qkv, self.window_size)
        if pad_hw != (h, w) and self.attn.qkv.bias is not None:
            windows = _fill_padding_with_bias(windows, self.attn.qkv.bias, self.window_size, pad_hw, (h, w))
        out = window_unpartition(self.attn.attend(windows), self.window_size, pad_hw, (h, w))
        return self.attn.proj(out)


def _fill_padding_with_bias(
    windows: torch.Tensor, bias: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Set the padded positions of partitioned qkv windows to ``bias`` (the projection of a zero token)."""
    b = windows.shape[0] // (pad_hw[0] * pad_hw[1] // window_size**2)
    is_pad = torch.ones(1, pad_hw[0], pad_hw[1], 1, dtype=torch.bool, device=windows.device)
    is_pad[:, : hw[0], : hw[1]] = False
    pad_windows, _ = window_partition(is_pad.expand(b, -1, -1, -1), window_size)
    return torch.where(pad_windows, bias.to(windows.dtype), windows)


class PatchEmbed(nn.Module):
    """Image to patch tokens: (B, C_in, H, W) -> (B, H / patch, W / patch, dim)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class ImageEncoderViT(nn.Module):
    """SAM's ViT backbone and neck: (B, 3, img_size, img_size) -> (B, out_chans, img_size/16, img_size/16)."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))
