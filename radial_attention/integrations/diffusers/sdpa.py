"""Run one self-attention module with its SDPA call answered by the block-sparse radial op.

Why this way. A diffusers attention processor (``WanAttnProcessor``,
``HunyuanVideoAttnProcessor2_0``, ...) does the projections (``attn.to_q`` etc., so LoRA layers
work), the q/k norms, RoPE, the token concatenation and the output projection, and hands the
attention itself to ``dispatch_attention_fn``, which for diffusers' native backends calls
``torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=...)`` with
``q, k, v: [B, H, S, D]``. Exactly that one call has to change. diffusers has no public way to
register a new attention backend, and copying a processor's ``__call__`` would freeze one
diffusers version into this library. So the original processor runs unchanged, inside a
:class:`torch.overrides.TorchFunctionMode` (a public torch API, active only for the duration
of that module's forward) that answers its SDPA call with
:func:`radial_attention.ops.block_sparse_attention` and passes every other torch call through.

What the intercepted call may carry: no dropout, no causal flag, equal head counts, and as
``attn_mask`` either nothing or a key-padding mask (bool, or additive 0/-inf) of shape
``[B|1, 1, 1, S]`` that keeps a prefix of the keys, as HunyuanVideo's prompt mask does; it
becomes ``key_lengths``; or, where the family declares it (``pairwise_prefix_mask``: HunyuanVideo
1.5), a bool ``[B|1, 1, S, S]`` mask ``m[q] & m[k]`` of a prefix mask ``m``: it becomes
``key_lengths`` too, and the padded query rows, which it masks out entirely, are set to 0 as
torch SDPA gives them; or, where the family's config asks for one (SkyReels-V2
``num_frame_per_block > 1``), its bool ``[1, 1, S, S]`` frame-block causal mask, which goes into the
block mask (``RadialState.mask_for(..., frame_block=k)``). Anything else raises: silently computing
something else is worse.

Mochi's processor makes one such call per batch item (batch 1, the video then that item's valid
prompt tokens, no mask); its family declares ``sdpa_calls="per_batch_item"`` and every call gets
the mask of its own length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_SDPA_DEFAULTS = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}

# diffusers attention backends whose attention is a torch SDPA call (they only pick SDPA's kernel).
NATIVE_BACKENDS = (None, "native", "_native_cudnn", "_native_efficient", "_native_flash", "_native_math")


def _bind(args, kwargs) -> dict:
    if len(args) > len(_SDPA_ARGS):
        raise TypeError(f"scaled_dot_product_attention got {len(args)} positional arguments")
    bound = dict(_SDPA_DEFAULTS)
    bound.update(zip(_SDPA_ARGS, args))
    bound.update(kwargs)
    return bound


def key_lengths_from_mask(attn_mask: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """``[B]`` int lengths from a key-padding mask ``[B|1, 1, 1, S]`` (or ``[B, S]``) that keeps a prefix.

    Bool masks keep ``True``; float masks are additive (``0`` keeps, ``-inf`` drops).
    """
    m = attn_mask
    if m.dim() == 2:
        m = m[:, None, None, :]
    if m.dim() != 4 or m.shape[1] != 1 or m.shape[2] != 1 or m.shape[-1] != seq_len or m.shape[0] not in (1, batch):
        raise ValueError(
            "radial attention accepts only a key-padding attention mask of shape [B or 1, 1, 1, S] = "
            f"[{batch} or 1, 1, 1, {seq_len}] in the self-attention; got {tuple(attn_mask.shape)}"
        )
    if m.dtype == torch.bool:
        keep = m[:, 0, 0, :]
    elif m.dtype.is_floating_point:
        v = m[:, 0, 0, :]
        if not bool(((v == 0) | (v == float("-inf"))).all()):
            raise ValueError("radial attention accepts additive masks only with values 0 (keep) and -inf (drop)")
        keep = v == 0
    else:
        raise ValueError(f"attention mask must be bool or float, got {m.dtype}")
    keep = keep.expand(batch, seq_len)
    lengths = keep.sum(dim=-1)
    prefix = torch.arange(seq_len, device=keep.device)[None, :] < lengths[:, None]
    if not bool((prefix == keep).all()):
        raise ValueError(
            "radial attention accepts a key-padding mask that keeps a prefix of the keys (padding at the end), "
            "as HunyuanVideo's prompt mask does; this mask drops keys in the middle"
        )
    return lengths


def _is_pairwise(attn_mask: torch.Tensor, seq_len: int) -> bool:
    """A mask with a query dimension: ``[*, *, S, S]`` (not key padding ``[*, *, 1, S]``)."""
    return attn_mask.dim() == 4 and seq_len > 1 and attn_mask.shape[-2] == seq_len


def key_lengths_from_pairwise_mask(attn_mask: torch.Tensor, batch: int, seq_len: int, where: str) -> torch.Tensor:
    """``[B]`` int lengths ``L_b`` from a bool ``[B|1, 1, S, S]`` mask that is ``m[q] & m[k]`` for a
    per-token mask ``m`` keeping the first ``L_b`` tokens (HunyuanVideo 1.5's processor builds it so).

    Exact: ``L_b`` is the diagonal's count (``m[q] & m[q] = m[q]``), and the mask is that outer
    product exactly when its top-left ``L_b x L_b`` square is all kept and nothing else is. Only
    ``all`` / ``any`` reductions over views (a sum over the bool mask would make an int64 copy,
    8 bytes per entry: 21 GB at 480p), one pass over the mask, two device syncs. Anything else raises.
    """
    m = attn_mask
    if m.dtype != torch.bool or m.dim() != 4 or m.shape[1] != 1 or m.shape[0] not in (1, batch):
        raise ValueError(
            f"{where}: radial attention accepts a pairwise attention mask only as bool [B or 1, 1, S, S] = "
            f"[{batch} or 1, 1, {seq_len}, {seq_len}]; got {m.dtype} {tuple(m.shape)}"
        )
    m = m[:, 0]
    lengths = m.diagonal(dim1=-2, dim2=-1).sum(-1)  # [B']: S entries each, a small copy
    ok = []
    for b, n in enumerate(lengths.tolist()):
        ok += [m[b, :n, :n].all(), ~m[b, n:].any(), ~m[b, :n, n:].any()]
    if not bool(torch.stack(ok).all()):
        raise ValueError(
            f"{where}: radial attention accepts a [B, 1, S, S] attention mask only when it is m[q] & m[k] for a "
            "per-token mask m that keeps a prefix of the tokens (padding at the end), as HunyuanVideo 1.5's "
            "processor builds it; this mask is not"
        )
    return lengths.expand(batch)


def zero_padded_queries(out: torch.Tensor, key_lengths: torch.Tensor) -> torch.Tensor:
    """``out [B, H, S, D]`` with query rows ``>= key_lengths[b]`` set to 0: what torch SDPA gives
    for rows a pairwise mask masks out entirely (the radial kernels only drop the padded keys)."""
    S = out.shape[-2]
    valid = torch.arange(S, device=out.device)[None, :] < key_lengths.to(out.device)[:, None]  # [B, S]
    return out.masked_fill(~valid[:, None, :, None], 0)


class RadialSDPA(TorchFunctionMode):
    """Answers ``F.scaled_dot_product_attention`` calls with radial block-sparse attention.

    Each call gets the mask of its own length: ``S - F*T`` extra tokens after the video, so a
    processor making one call per batch item (Mochi, ``per_batch_item``), each with that item's
    valid prompt tokens, gets one mask per prompt length (cached per ``(F, T, extra)``).

    Args:
        state: the :class:`~.schedule.RadialState` (layout of the call in progress, masks, settings).
        where: a name for error messages (the attention module's path).
        per_batch_item: the processor makes one call per batch item: every call must have batch 1.
    """

    def __init__(self, state, where: str, per_batch_item: bool = False):
        super().__init__()
        self.state = state
        self.where = where
        self.per_batch_item = per_batch_item
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        self.calls += 1
        return self._attend(**_bind(args, kwargs))

    def _attend(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        from radial_attention.ops import block_sparse_attention

        where = self.where
        if dropout_p:
            raise ValueError(f"{where}: radial attention has no attention dropout (got dropout_p={dropout_p})")
        if is_causal:
            raise ValueError(f"{where}: radial attention is not causal (got is_causal=True)")
        if query.shape != key.shape or key.shape != value.shape:
            raise ValueError(
                f"{where}: radial self-attention expects q, k, v of one shape [B, H, S, D]; got "
                f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)} (grouped or cross attention?)"
            )
        B, H, S, D = query.shape
        if self.per_batch_item and B != 1:
            raise ValueError(
                f"{where}: this model's processor attends once per batch item, so radial attention expects "
                f"q, k, v of batch 1 in each call; got {tuple(query.shape)}"
            )
        frames, tpf = self.state.layout
        prefix_tokens = self.state.prefix_tokens  # tokens before the video (CogVideoX's text), from the call
        extra_tokens = (
            S - prefix_tokens - frames * tpf
        )  # tokens after the video (HunyuanVideo's text; Mochi: this item's)
        if extra_tokens < 0 or (extra_tokens > 0 and not self.state.family.has_extra_tokens):
            before = f"{prefix_tokens} tokens before the video + " if prefix_tokens else ""
            raise ValueError(
                f"{where}: the self-attention has S={S} tokens but the latent layout of this call is "
                f"{before}F={frames} frames x T={tpf} tokens = {prefix_tokens + frames * tpf} tokens"
                + ("" if extra_tokens < 0 else " and this model family appends no tokens after the video")
            )
        query, key, value = _in_autocast_dtype(query, key, value)
        key_lengths = None
        padded_queries = False  # query rows past key_lengths come out 0 (a pairwise mask's padding)
        frame_block = self.state.frame_block
        if attn_mask is not None and frame_block > 1:  # SkyReels-V2 DF's frame-block causal mask
            self._check_frame_causal(attn_mask, S, frame_block * tpf)
        elif attn_mask is not None and _is_pairwise(attn_mask, S) and self.state.family.pairwise_prefix_mask:
            key_lengths, padded_queries = pairwise_key_lengths(attn_mask, B, S, where)  # HunyuanVideo 1.5
        elif attn_mask is not None:
            key_lengths = cached_key_lengths(self.state, attn_mask, B, S)
        mask = self.state.mask_for(
            frames, tpf, extra_tokens, prefix_tokens, frame_block=frame_block if attn_mask is not None else 1
        )
        out = block_sparse_attention(
            query, key, value, mask, scale=scale, backend=self.state.config.backend, key_lengths=key_lengths
        )
        return zero_padded_queries(out, key_lengths) if padded_queries else out

    def _check_frame_causal(self, attn_mask, S, causal_tokens):
        """The mask must be the frame-block causal one the config implies (its blocks are uniform, so
        one element per mask block, ``[::B, ::B]``, tells): anything else raises."""
        from .schedule import frame_causal_blocks

        B = self.state.config.block_size
        if attn_mask.dtype != torch.bool or tuple(attn_mask.shape) != (1, 1, S, S):
            raise ValueError(
                f"{self.where}: expected the model's frame-block causal mask, bool [1, 1, {S}, {S}]; got "
                f"{attn_mask.dtype} {tuple(attn_mask.shape)}"
            )
        expected = frame_causal_blocks(-(-S // B), B, causal_tokens).to(attn_mask.device)
        if not torch.equal(attn_mask[0, 0, ::B, ::B], expected):
            raise ValueError(
                f"{self.where}: the attention mask is not the frame-block causal mask of "
                f"{causal_tokens} tokens per causal block that the transformer's config implies"
            )


def _in_autocast_dtype(q, k, v):
    """q, k, v as SDPA would run them: SDPA is on autocast's lower-precision list, so under autocast
    it runs in the autocast dtype whatever its inputs are (HunyuanVideo's q/k come out of float32
    norms, v does not)."""
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def cached_key_lengths(state, attn_mask, B, S):
    """``key_lengths_from_mask`` once per forward: every block of one forward gets the same mask
    tensor, so it is converted (and checked, a device sync) once and kept in ``state``; ``None`` when
    nothing is padded (no masking work)."""
    cached = state.key_mask_cache
    if cached is not None and cached[0] is attn_mask and cached[1] == attn_mask._version:
        return cached[2]
    lengths = key_lengths_from_mask(attn_mask, B, S)
    lengths = None if bool((lengths == S).all()) else lengths
    state.key_mask_cache = (attn_mask, attn_mask._version, lengths)
    return lengths


def pairwise_key_lengths(attn_mask, B, S, where):
    """``(key_lengths or None, padded_queries)`` of a pairwise prefix mask (HunyuanVideo 1.5): the
    lengths of :func:`key_lengths_from_pairwise_mask` (``None`` when nothing is padded), and whether
    the query rows past them must be zeroed afterwards (:func:`zero_padded_queries`), as SDPA gives."""
    lengths = key_lengths_from_pairwise_mask(attn_mask, B, S, where)
    return (None, False) if bool((lengths == S).all()) else (lengths, True)


class DenseSDPA(TorchFunctionMode):
    """In a dense step or layer: answers the processor's SDPA call with FA4's dense kernel where it runs.

    Only calls that dense attention would compute identically are taken (equal q/k/v shapes, no
    dropout, not causal, no mask, a key-padding prefix mask, or the pairwise prefix mask of a family
    declaring ``pairwise_prefix_mask``); the rest, and every call where
    ``resolve_dense_backend`` does not pick ``fa4`` (no Hopper GPU, flash-attn-4 not installed, an
    fp32 model, a head dim FA4 does not run), go to torch's SDPA exactly as the model made them.

    Args:
        backend: ``"auto"`` or ``"fa4"`` (``"fa4"`` raises where FA4 cannot run the call).
        where: a name for error messages (the attention module's path).
        state: the hooks' :class:`~.schedule.RadialState`, whose per-forward cache of the padding
            mask's key lengths is shared with the radial calls (None: converted on every call).
    """

    def __init__(self, backend: str, where: str, state=None):
        super().__init__()
        self.backend = backend
        self.where = where
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        call = _bind(args, kwargs)
        q, k, v = call["query"], call["key"], call["value"]
        if call["dropout_p"] or call["is_causal"] or call["enable_gqa"] or q.dim() != 4:
            return func(*args, **kwargs)
        q, k, v = _in_autocast_dtype(q, k, v)  # before the dtype check: mixed q/k/v dtypes are fine there
        if q.shape != k.shape or k.shape != v.shape or q.dtype != k.dtype or k.dtype != v.dtype:
            return func(*args, **kwargs)
        from radial_attention.ops import dense_attention, resolve_dense_backend

        if resolve_dense_backend(self.backend, q) != "fa4":
            return func(*args, **kwargs)
        key_lengths, padded_queries = None, False
        attn_mask = call["attn_mask"]
        if attn_mask is not None:
            B, _, S, _ = q.shape
            pairwise = _is_pairwise(attn_mask, S) and getattr(
                getattr(self.state, "family", None), "pairwise_prefix_mask", False
            )
            try:
                if pairwise:  # HunyuanVideo 1.5: key lengths, and the padded query rows zeroed as SDPA does
                    key_lengths, padded_queries = pairwise_key_lengths(attn_mask, B, S, self.where)
                elif self.state is not None:
                    key_lengths = cached_key_lengths(self.state, attn_mask, B, S)
                else:
                    key_lengths = key_lengths_from_mask(attn_mask, B, S)
            except ValueError:  # not a key-padding prefix: SDPA computes it as given
                return func(*args, **kwargs)
        out = dense_attention(q, k, v, scale=call["scale"], key_lengths=key_lengths, backend="fa4")
        return zero_padded_queries(out, key_lengths) if padded_queries else out
