"""The TUNE++ network: a hierarchical 3D encoder-decoder of TUPA blocks with MC-dropout sites.

Layout (L = len(widths) stages, stem stride s, total stride T = s * 2^(L-1))::

    x [B, in, D, H, W]
      full  = ResConvBlock(in -> c_full)               full resolution, skip for the last decoder step
      e     = Downsample(c_full -> w0, stride=s)       the stem
      enc_i = TUPA^depths[i](e)                        i = 0..L-1; Downsample(w_i -> w_i+1, 2) between
    "bottleneck" = enc_{L-1}
    "dec{i}"     = TUPA^decoder_depths[i](Upsample(prev) + enc_i)      i = L-2 .. 0
    "head"       = ResConvBlock(Upsample_s(dec0) + full)                full resolution
    logits  = Conv1x1(head -> num_classes)
    log_var = clamp(Conv1x1(head -> 1), LOG_VAR_MIN, LOG_VAR_MAX)      aleatoric log-variance of logits
    aux     = Conv1x1(dec_i -> num_classes) for i in (0, 1)            deep supervision, stride s*2^i
    gate_logits = every TUPA block's error logit (gate="supervised", training only; see blocks.tupa)

Size-agnostic: no positional embeddings and no N -> P projections (UNETR++ has both, tying it to
one input size); every window whose sides are divisible by T works.

**Dropout-site vocabulary** (execution order): ``"bottleneck"`` (w_{L-1} channels, stride T),
``"dec{L-2}"`` ... ``"dec0"`` (w_i channels, stride s*2^i), ``"head"`` (c_full channels, stride 1).
A site multiplies the output feature of that position by its mask before anything else uses it
(the next stage and the deep-supervision head).

**Trunk / head split.** Everything before the first configured site is deterministic, so the MC
inference engine runs it once per window (:meth:`TUNEPP.trunk`) and repeats only the rest S times
(:meth:`TUNEPP.head`, :func:`repeat_for_samples`). Both take and return positional tensors only, so
a wrapper module exports to ONNX with masks as graph inputs.

Fixes the audit's MC flaw: the public code had **no dropout layer** and relied on ``model.train()``
flipping BatchNorm; here there is no BatchNorm at all and dropout is explicit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tunepp_deploy.config.schema import TuneppConfig
from tunepp_deploy.errors import ConfigError, TuneppError
from tunepp_deploy.model.blocks.conv import Downsample, Int3, ResConvBlock, Upsample
from tunepp_deploy.model.blocks.dropout import DropoutMode, DropoutSite, MaskedDropout
from tunepp_deploy.model.blocks.tupa import GateMode, TUPABlock

LOG_VAR_MIN = -10.0
LOG_VAR_MAX = 6.0
#: Deep-supervision heads sit on these decoder positions (when they exist), finest first.
AUX_SITES = ("dec0", "dec1")


class NetOutput(NamedTuple):
    """What :meth:`TUNEPP.forward` returns.

    Attributes:
        logits: ``[B, K, D, H, W]`` class logits at input resolution.
        log_var: ``[B, 1, D, H, W]`` log-variance of the logits' Gaussian corruption (aleatoric),
            clamped to ``[LOG_VAR_MIN, LOG_VAR_MAX]``.
        aux_logits: deep-supervision logits, finest first: ``aux_logits[j]`` is ``[B, K, ...]`` at
            stride ``stem_stride * 2^j``. Empty unless training (or ``with_aux=True``).
        gate_logits: with ``gate="supervised"``, every TUPA block's error logit ``[B, 1, d, h, w]``
            (the logit of its predicted probability that the final prediction is wrong there), in
            execution order (encoder, then decoder), for :func:`tunepp_deploy.losses.gate.gate_loss`.
            Empty for the learned gate, and when ``aux_logits`` is.
    """

    logits: Tensor
    log_var: Tensor
    aux_logits: list[Tensor]
    gate_logits: tuple[Tensor, ...] = ()


def repeat_for_samples(trunk_outputs: Sequence[Tensor], samples: int) -> tuple[Tensor, ...]:
    """Repeat every trunk output ``samples`` times along the batch axis, **sample-major**.

    Row ``s * B + b`` of the result is window ``b`` for MC sample ``s``; masks for
    :meth:`TUNEPP.head` must use the same order (e.g. ``site.sample_mask(window, S * B)``).
    """
    return tuple(t.repeat(samples, *([1] * (t.dim() - 1))) for t in trunk_outputs)


def _stack(
    channels: int, depth: int, heads: int, proj_tokens: int, topo_lambda: float, gate: GateMode
) -> nn.Sequential:
    return nn.Sequential(*(TUPABlock(channels, heads, proj_tokens, topo_lambda, gate=gate) for _ in range(depth)))


def _run_stack(stack: nn.Module, x: Tensor, sink: list[Tensor] | None) -> Tensor:
    """``stack(x)``, appending each supervised block's error logit to ``sink`` when one is given."""
    if sink is None:
        return stack(x)
    for block in stack:
        x, z = block.forward_with_error_logit(x)
        if z is not None:
            sink.append(z)
    return x


class TUNEPP(nn.Module):
    """TUNE++ (module docstring has the layout, site vocabulary and trunk/head contract).

    Args:
        in_channels: image channels.
        num_classes: K, background included.
        widths: channels per encoder stage (each divisible by ``heads``).
        depths: TUPA blocks per encoder stage.
        decoder_depths: TUPA blocks per decoder stage, indexed by level 0..L-2 (default ``depths[:-1]``).
        stem_stride: stride of the stem, per axis.
        heads: attention heads in every TUPA block.
        proj_tokens: P, the most pooled key/value tokens per spatial/topology branch.
        deep_supervision: whether aux heads exist at ``AUX_SITES``.
        dropout_sites: site names (any order; applied in execution order).
        dropout_p: drop probability of every site.
        dropout_mode: ``"channel"`` ([B, C] masks) or ``"element"`` ([B, C, d, h, w] masks).
        topo_lambda: initial strength of the topology key bias.
        full_res_channels: channels of the full-resolution skip/head (default ``max(widths[0] // 2, 4)``).
        gate: fusion gate of every TUPA block, ``"learned"`` or ``"supervised"`` (:mod:`.blocks.tupa`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int],
        depths: Sequence[int],
        decoder_depths: Sequence[int] | None = None,
        stem_stride: Int3 = (2, 2, 2),
        heads: int = 4,
        proj_tokens: int = 64,
        deep_supervision: bool = True,
        dropout_sites: Sequence[str] = ("dec1", "dec0"),
        dropout_p: float = 0.1,
        dropout_mode: DropoutMode = "channel",
        topo_lambda: float = 1.0,
        full_res_channels: int | None = None,
        gate: GateMode = "learned",
    ) -> None:
        super().__init__()
        L = len(widths)
        if gate not in ("learned", "supervised"):
            raise ConfigError(f"model.gate must be 'learned' or 'supervised', got {gate!r}")
        self.gate = gate
        if L < 2 or len(depths) != L:
            raise ConfigError("model: need len(widths) == len(depths) >= 2")
        dec_depths = list(depths[:-1]) if decoder_depths is None else list(decoder_depths)
        if len(dec_depths) != L - 1:
            raise ConfigError("model.decoder_depths must have len(widths) - 1 entries")
        self.widths = list(widths)
        self.num_classes = num_classes
        self.stem_stride: Int3 = tuple(stem_stride)  # type: ignore[assignment]
        c_full = full_res_channels or max(widths[0] // 2, 4)
        self.full_res_channels = c_full

        #: Positions in execution order; a dropout site can sit at each.
        self.positions: list[str] = ["bottleneck", *(f"dec{i}" for i in range(L - 2, -1, -1)), "head"]
        unknown = [s for s in dropout_sites if s not in self.positions]
        if unknown:
            raise ConfigError(f"model.dropout.sites: unknown site(s) {unknown}; this network offers {self.positions}")
        if len(set(dropout_sites)) != len(dropout_sites):
            raise ConfigError(f"model.dropout.sites: duplicate site in {list(dropout_sites)}")

        self.full = ResConvBlock(in_channels, c_full)
        self.stem = Downsample(c_full, widths[0], self.stem_stride)
        self.encoder = nn.ModuleList(
            _stack(widths[i], depths[i], heads, proj_tokens, topo_lambda, gate) for i in range(L)
        )
        self.down = nn.ModuleList(Downsample(widths[i], widths[i + 1]) for i in range(L - 1))
        self.up = nn.ModuleList(Upsample(widths[i + 1], widths[i]) for i in range(L - 1))
        self.decoder = nn.ModuleList(
            _stack(widths[i], dec_depths[i], heads, proj_tokens, topo_lambda, gate) for i in range(L - 1)
        )
        self.final_up = Upsample(widths[0], c_full, self.stem_stride)
        self.final = ResConvBlock(c_full, c_full)
        self.out = nn.Conv3d(c_full, num_classes, 1)
        self.log_var = nn.Conv3d(c_full, 1, 1)
        with torch.no_grad():  # start with little aleatoric noise: sigma = exp(-2) ~ 0.14 logits
            self.log_var.bias.fill_(-4.0)
        self.aux = nn.ModuleDict(
            {
                name: nn.Conv3d(widths[int(name[3:])], num_classes, 1)
                for name in AUX_SITES
                if deep_supervision and name in self.positions
            }
        )
        ordered = [s for s in self.positions if s in dropout_sites]
        self.dropout = nn.ModuleDict({s: MaskedDropout(s, self._channels(s), dropout_p, dropout_mode) for s in ordered})
        self._sites = [DropoutSite(s, self._channels(s), dropout_p, dropout_mode, self._stride(s)) for s in ordered]
        self._first = self.positions.index(ordered[0]) if ordered else len(self.positions) - 1

    # ------------------------------------------------------------------ geometry
    @property
    def total_stride(self) -> Int3:
        """Every window side must be divisible by this."""
        f = 2 ** (len(self.widths) - 1)
        return tuple(s * f for s in self.stem_stride)  # type: ignore[return-value]

    def _level(self, position: str) -> int:
        """Encoder level of a position: L-1 for the bottleneck, i for dec{i}, -1 for the head."""
        if position == "bottleneck":
            return len(self.widths) - 1
        if position == "head":
            return -1
        return int(position[3:])

    def _channels(self, position: str) -> int:
        lv = self._level(position)
        return self.full_res_channels if lv < 0 else self.widths[lv]

    def _stride(self, position: str) -> Int3:
        lv = self._level(position)
        if lv < 0:
            return (1, 1, 1)
        return tuple(s * 2**lv for s in self.stem_stride)  # type: ignore[return-value]

    def check_window(self, window: Sequence[int]) -> None:
        """Raise :class:`TuneppError` unless every side of ``window`` is divisible by the stride."""
        if len(window) != 3 or any(w % t or w <= 0 for w, t in zip(window, self.total_stride, strict=True)):
            raise TuneppError(
                f"window {tuple(window)} is not divisible by the network's total stride {self.total_stride} (per axis)"
            )

    # ------------------------------------------------------------------ MC-dropout interface
    def dropout_sites(self) -> list[DropoutSite]:
        """The configured dropout sites in execution order (= mask order of ``head``/``forward``)."""
        return list(self._sites)

    @property
    def first_site(self) -> str:
        """Position where the trunk ends (the first dropout site, or ``"head"`` without sites)."""
        return self.positions[self._first]

    def trunk_output_names(self) -> list[str]:
        """Names of :meth:`trunk`'s outputs: ``skip_full``, ``skip0``.., then ``feat_<first site>``."""
        lv = self._level(self.first_site)
        names = ["skip_full", *(f"skip{i}" for i in range(lv))] if lv >= 0 else []
        return [*names, f"feat_{self.first_site}"]

    def trunk_output_shapes(self, window: Int3, batch: int) -> list[tuple[int, ...]]:
        """Shapes of :meth:`trunk`'s outputs for ``batch`` windows of size ``window``."""

        def shape(c: int, stride: Int3) -> tuple[int, ...]:
            return (batch, c, *(w // s for w, s in zip(window, stride, strict=True)))

        lv = self._level(self.first_site)
        out = [shape(self.full_res_channels, (1, 1, 1))] if lv >= 0 else []
        out += [shape(self.widths[i], self._stride(f"dec{i}")) for i in range(lv)]
        return [*out, shape(self._channels(self.first_site), self._stride(self.first_site))]

    def sample_masks(self, window: Int3, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """One random mask per site, in site order (device: the model's parameters' device)."""
        device = next(self.parameters()).device
        return [s.sample_mask(window, batch, generator=generator).to(device) for s in self._sites]

    # ------------------------------------------------------------------ computation
    def _encode(self, x: Tensor, sink: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        full = self.full(x)
        e = self.stem(full)
        skips: list[Tensor] = []
        for i, stage in enumerate(self.encoder):
            e = _run_stack(stage, e, sink)
            skips.append(e)
            if i < len(self.down):
                e = self.down[i](e)
        return full, skips

    def _step(
        self,
        pos: int,
        prev: Tensor | None,
        full: Tensor | None,
        skips: Sequence[Tensor],
        sink: list[Tensor] | None = None,
    ) -> Tensor:
        """The (pre-dropout) feature at position ``pos`` from the previous position's feature."""
        name = self.positions[pos]
        if name == "bottleneck":
            return skips[-1]
        assert prev is not None
        if name == "head":
            assert full is not None
            return self.final(self.final_up(prev) + full)
        i = int(name[3:])
        return _run_stack(self.decoder[i], self.up[i](prev) + skips[i], sink)

    def _decode(
        self,
        start: int,
        feat: Tensor,
        full: Tensor | None,
        skips: Sequence[Tensor],
        masks: dict[str, Tensor | None],
        want_aux: bool,
        sink: list[Tensor] | None = None,
    ) -> NetOutput:
        aux: dict[str, Tensor] = {}
        for pos in range(start, len(self.positions)):
            name = self.positions[pos]
            if pos > start:
                feat = self._step(pos, feat, full, skips, sink)
            if name in self.dropout:
                feat = self.dropout[name](feat, masks.get(name))
            if want_aux and name in self.aux:
                aux[name] = self.aux[name](feat)
        log_var = self.log_var(feat).clamp(LOG_VAR_MIN, LOG_VAR_MAX)
        gates = tuple(sink) if sink else ()
        return NetOutput(self.out(feat), log_var, [aux[n] for n in AUX_SITES if n in aux], gates)

    def trunk(self, x: Tensor) -> tuple[Tensor, ...]:
        """Deterministic part up to (not including) the first dropout site.

        Returns ``(skip_full, skip0, ..., skip{l-1}, feat)`` where ``feat`` is the pre-dropout feature
        at :attr:`first_site` (level l) and the skips are what the rest of the decoder still needs;
        just ``(feat,)`` when the first site is ``"head"`` (see :meth:`trunk_output_names`).
        """
        self.check_window(x.shape[2:])
        full, skips = self._encode(x)
        feat: Tensor | None = None
        for pos in range(self._first + 1):
            feat = self._step(pos, feat, full, skips)
        assert feat is not None
        lv = self._level(self.first_site)
        return (full, *skips[:lv], feat) if lv >= 0 else (feat,)

    def head(self, *tensors: Tensor) -> tuple[Tensor, Tensor]:
        """``head(*trunk_outputs, *masks) -> (logits, log_var)``.

        ``masks``: one per :meth:`dropout_sites` entry, in that order, batch size equal to the trunk
        outputs' (repeat them with :func:`repeat_for_samples`). Masks are always applied as given,
        in train or eval mode. Deep-supervision outputs are not produced.
        """
        n = len(self.trunk_output_names())
        if len(tensors) != n + len(self._sites):
            raise TuneppError(
                f"head() takes {n} trunk outputs and {len(self._sites)} masks "
                f"({[s.name for s in self._sites]}), got {len(tensors)} tensors"
            )
        trunk, masks = tensors[:n], tensors[n:]
        if len(trunk) > 1:
            full, skips, feat = trunk[0], list(trunk[1:-1]), trunk[-1]
        else:
            full, skips, feat = None, [], trunk[0]
        named = {s.name: m for s, m in zip(self._sites, masks, strict=True)}
        out = self._decode(self._first, feat, full, skips, named, want_aux=False)
        return out.logits, out.log_var

    def forward(self, x: Tensor, masks: Sequence[Tensor] | None = None, with_aux: bool | None = None) -> NetOutput:
        """Full pass. ``masks``: one per site in :meth:`dropout_sites` order, or None.

        With ``masks=None`` dropout samples from the torch RNG in training mode and is the identity in
        eval mode. ``with_aux`` (default: ``self.training``) returns the deep-supervision logits and,
        with the supervised gate, the gates' error logits (``NetOutput.gate_logits``).
        """
        self.check_window(x.shape[2:])
        if masks is not None and len(masks) != len(self._sites):
            raise TuneppError(f"forward() needs {len(self._sites)} masks, got {len(masks)}")
        named: dict[str, Tensor | None] = (
            {s.name: m for s, m in zip(self._sites, masks, strict=True)} if masks is not None else {}
        )
        want_aux = self.training if with_aux is None else with_aux
        sink: list[Tensor] | None = [] if want_aux and self.gate == "supervised" else None
        full, skips = self._encode(x, sink)
        return self._decode(0, skips[-1], full, skips, named, want_aux, sink)


def build_network(cfg: TuneppConfig) -> TUNEPP:
    """The network described by ``cfg.model`` for ``cfg.data.num_classes`` classes.

    Raises :class:`ConfigError` for unknown dropout sites or a training crop that the network's
    total stride does not divide.
    """
    m = cfg.model
    net = TUNEPP(
        in_channels=m.in_channels,
        num_classes=cfg.data.num_classes,
        widths=m.widths,
        depths=m.depths,
        decoder_depths=m.decoder_depths,
        stem_stride=m.stem_stride,
        heads=m.heads,
        proj_tokens=m.proj_tokens,
        deep_supervision=m.deep_supervision,
        dropout_sites=m.dropout.sites,
        dropout_p=m.dropout.p,
        dropout_mode=m.dropout.mode,
        topo_lambda=m.topo_lambda,
        full_res_channels=m.full_res_channels,
        gate=m.gate,
    )
    for name, window in (("data.crop_size", cfg.data.crop_size), ("infer.window", cfg.infer.window)):
        if window is not None and any(w % t for w, t in zip(window, net.total_stride, strict=True)):
            raise ConfigError(
                f"{name} {tuple(window)} is not divisible by the network's total stride "
                f"{net.total_stride} (stem_stride x 2^(len(widths)-1))"
            )
    return net


__all__ = ["AUX_SITES", "LOG_VAR_MAX", "LOG_VAR_MIN", "TUNEPP", "NetOutput", "build_network", "repeat_for_samples"]
