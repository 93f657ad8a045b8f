"""Training losses. Each loss is one clearly named function on tensors; what it expects and what
it returns is in its docstring.

Sync critic (:mod:`cals.train.sync_critic`):

- :func:`multiway_matching_loss`: the multi-way matching loss of Chung, Kang & Chung (2020,
  "Perfect match"), which CALS uses to pre-train its critic.
- :func:`sync_bce_loss`: Wav2Lip's expert-discriminator loss (binary cross-entropy on the
  ReLU'd cosine similarity of one in-sync and one off-sync pair per anchor).

Both work on per-window embedding sequences of the same clips, ``video`` and ``audio``
``(B, N, D)`` (row n = the window starting at frame n, see
:meth:`cals.models.sync_critic.SyncCritic.forward`), and take their candidates at offsets
``-K .. +K`` frames inside each clip. An *anchor* is a window position n whose candidates
``n - K .. n + K`` are all real windows (``valid``), so a sequence of N real windows has
``N - 2K`` anchors; with ``N = 2K + 1`` (a training window of ``t_s + 2K`` frames) exactly one.

CALS generator training (:mod:`cals.train.cals`): :func:`reconstruction_loss`,
:func:`generator_gan_loss`, :func:`discriminator_loss`, :func:`sync_av_loss`, :func:`sync_vv_loss`.

Audio-to-Lip pre-training (:mod:`cals.train.a2l`): :func:`masked_unit_loss`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from cals.models.l2f import mask_row


def offset_similarities(anchors: torch.Tensor, candidates: torch.Tensor, offsets: int) -> torch.Tensor:
    """Cosine similarities of each anchor window with the candidate windows around it.

    Args:
        anchors, candidates: ``(B, N, D)`` unit embeddings of the same N windows (e.g. audio
            anchors against video candidates).
        offsets: K; candidates at offsets ``-K .. +K``.
    Returns:
        ``(B, N - 2K, 2K + 1)``: entry ``[b, i, j]`` compares anchor ``i + K`` with candidate
        ``i + j`` (offset ``j - K``); column K is the true (in-sync) pair.
    """
    if anchors.shape != candidates.shape or anchors.ndim != 3:
        raise ValueError(f"anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)} must both be (B, N, D)")
    width = 2 * offsets + 1
    if anchors.shape[1] < width:
        raise ValueError(f"{anchors.shape[1]} windows: offsets ±{offsets} need at least {width}")
    around = candidates.unfold(1, width, 1)  # (B, N - 2K, D, 2K + 1)
    return torch.einsum("bnd,bndk->bnk", anchors[:, offsets : anchors.shape[1] - offsets], around)


def anchor_mask(valid: Optional[torch.Tensor], shape: torch.Size, offsets: int) -> torch.Tensor:
    """``(B, N - 2K)`` bool: anchors whose whole candidate range is made of real windows.

    ``valid`` is ``(B, N)`` bool (None: all real); real windows are a prefix of each row."""
    batch, count = shape[0], shape[1]
    if count < 2 * offsets + 1:
        raise ValueError(f"{count} windows: offsets ±{offsets} need at least {2 * offsets + 1}")
    if valid is None:
        return torch.ones(batch, count - 2 * offsets, dtype=torch.bool)
    return valid.unfold(1, 2 * offsets + 1, 1).all(dim=-1)


def _accuracy(similarities: torch.Tensor, mask: torch.Tensor, offsets: int) -> torch.Tensor:
    """Share of anchors whose most similar candidate is the true one (ties count as wrong)."""
    true = similarities[..., offsets]
    others = torch.cat([similarities[..., :offsets], similarities[..., offsets + 1 :]], dim=-1)
    hits = (true > others.max(dim=-1).values)[mask]
    return hits.float().mean() if hits.numel() else torch.zeros((), device=similarities.device)


def multiway_matching_loss(
    video: torch.Tensor,
    audio: torch.Tensor,
    offsets: int,
    temperature: float,
    valid: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-way matching loss (Chung, Kang & Chung 2020), both directions.

    For each audio anchor window, the candidates are the video windows of the same clip at
    offsets ``-K .. +K`` frames (``2K + 1`` candidates, the true one included); the logits are
    cosine similarities divided by ``temperature`` (a fixed hyper-parameter: 0.07 by default in
    the trainer, i.e. logits within ±14.3; the paper's learnable scale is not used); the loss is
    the softmax cross-entropy with the true offset as target. The reverse direction (each video
    anchor against the audio windows at offsets) is computed the same way, and the two are
    averaged. Chance level is ``log(2K + 1)`` (2.708 for K = 7); chance accuracy ``1/(2K + 1)``.

    Args:
        video, audio: ``(B, N, D)`` L2-normalised window embeddings of the same clips.
        offsets: K.
        temperature: softmax temperature (> 0).
        valid: ``(B, N)`` bool, True on real windows (None: all).
    Returns:
        ``(loss, metrics)``: the mean loss over valid anchors and both directions (0 with no
        anchor), and detached metrics ``loss_av`` (audio anchors), ``loss_va`` (video anchors),
        ``acc_av``, ``acc_va`` (top-1 offset accuracy), ``accuracy`` (their mean), ``anchors``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = anchor_mask(valid, video.shape, offsets).to(video.device)
    target = torch.full((int(mask.sum()),), offsets, dtype=torch.long, device=video.device)
    metrics: dict[str, torch.Tensor] = {"anchors": mask.sum().detach().float()}
    losses = []
    for name, anchors, candidates in (("av", audio, video), ("va", video, audio)):
        similarities = offset_similarities(anchors, candidates, offsets)
        if target.numel():
            loss = F.cross_entropy(similarities[mask] / temperature, target)
        else:
            loss = similarities.sum() * 0.0
        losses.append(loss)
        metrics[f"loss_{name}"] = loss.detach()
        metrics[f"acc_{name}"] = _accuracy(similarities.detach(), mask, offsets)
    metrics["accuracy"] = (metrics["acc_av"] + metrics["acc_va"]) / 2
    return (losses[0] + losses[1]) / 2, metrics


def multiway_chance_loss(offsets: int) -> float:
    """The multi-way loss of a critic that cannot tell offsets apart: ``log(2K + 1)``."""
    return math.log(2 * offsets + 1)


def sync_bce_loss(
    video: torch.Tensor,
    audio: torch.Tensor,
    offsets: int,
    valid: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    eps: float = 1e-7,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Wav2Lip's sync loss: binary cross-entropy on ``p = relu(cos(audio, video))``.

    For every anchor, one in-sync pair (audio window n, video window n; label 1) and one
    off-sync pair (audio window n, video window n + o with o drawn uniformly from
    ``±1 .. ±K``; label 0). ``p`` is clamped to ``[eps, 1 - eps]``: a positive pair with a
    negative cosine gets no gradient (as in Wav2Lip, whose embeddings are non-negative).

    Args:
        video, audio, offsets, valid: as :func:`multiway_matching_loss`.
        generator: draws the negative offsets (a fixed-seed one makes validation repeatable).
    Returns:
        ``(loss, metrics)``: mean BCE over both pair kinds; ``bce_pos``, ``bce_neg``,
        ``cos_pos``, ``cos_neg`` and the top-1 offset accuracies (as the multi-way loss reports
        them) for comparison.
    """
    mask = anchor_mask(valid, video.shape, offsets).to(video.device)
    similarities = offset_similarities(audio, video, offsets)  # (B, A, 2K + 1)
    chosen = similarities[mask]  # (M, 2K + 1)
    count = chosen.shape[0]
    draw = torch.randint(0, 2 * offsets, (count,), generator=generator).to(video.device)
    negative_column = draw + (draw >= offsets).long()  # skip column K (the true pair)
    positive = chosen[:, offsets]
    negative = chosen.gather(1, negative_column[:, None])[:, 0]
    p_pos = positive.clamp(min=0).clamp(eps, 1 - eps)
    p_neg = negative.clamp(min=0).clamp(eps, 1 - eps)
    bce_pos = F.binary_cross_entropy(p_pos, torch.ones_like(p_pos)) if count else similarities.sum() * 0.0
    bce_neg = F.binary_cross_entropy(p_neg, torch.zeros_like(p_neg)) if count else similarities.sum() * 0.0
    reverse = offset_similarities(video, audio, offsets).detach()
    acc_av = _accuracy(similarities.detach(), mask, offsets)
    acc_va = _accuracy(reverse, mask, offsets)
    metrics = {
        "bce_pos": bce_pos.detach(),
        "bce_neg": bce_neg.detach(),
        "cos_pos": positive.detach().mean() if count else torch.zeros(()),
        "cos_neg": negative.detach().mean() if count else torch.zeros(()),
        "acc_av": acc_av,
        "acc_va": acc_va,
        "accuracy": (acc_av + acc_va) / 2,
        "anchors": mask.sum().detach().float(),
    }
    return (bce_pos + bce_neg) / 2, metrics


__all__ = ["anchor_mask", "multiway_chance_loss", "multiway_matching_loss", "offset_similarities", "sync_bce_loss"]


# --- CALS generator training (cals.train.cals): Park et al. MM'23, Eq. 5-10 ---------------------


def reconstruction_loss(generated: torch.Tensor, target: torch.Tensor, real: Optional[torch.Tensor] = None,
                        lower_weight: float = 1.0) -> torch.Tensor:
    """L_recon = ||Î − I||_1, the mean absolute error per pixel value (Eq. 5).

    Args:
        generated, target: ``(B, T, 3, H, W)`` float RGB in [0, 1].
        real: ``(B, T)`` bool, True on real frames (None: all); padded frames do not count.
        lower_weight: weight of the rows the pose prior hides (from the mask line down, the
            mouth) relative to the rows above (1: the paper's plain L1). The weighted mean is
            divided by the mean weight, so the loss stays a per-pixel L1 in scale.
    """
    error = (generated - target).abs()
    if lower_weight != 1.0:
        rows = torch.ones(error.shape[-2], device=error.device, dtype=error.dtype)
        rows[mask_row(error.shape[-2]) :] = lower_weight
        error = error * (rows / rows.mean())[:, None]
    if real is None:
        return error.mean()
    return error[real].mean()


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """L_gan in its non-saturating form: ``−log D(Î)`` (BCE of D's logits against "real"),
    averaged over frames and patches.

    The paper writes ``log(1 − D(Î))`` (Eq. 6, Goodfellow et al.'s minimax form); minimising
    ``−log D(Î)`` has the same fixed point but does not saturate while D rejects the fakes
    early in training (Goodfellow et al. 2014, Sec. 3), which is what GAN code uses in practice.
    """
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_disc: ``−log D(I) − log(1 − D(Î))`` (BCE on logits), averaged over frames and patches.

    The paper's Eq. 7 writes ``log(1 − D(I)) + log D(Î)``, the same objective with the roles of
    "real" and "fake" written the other way round; here D(x) is the probability that x is real.
    Returns ``(loss, metrics)``: ``d_real`` and ``d_fake`` (mean D output on each, detached).
    """
    loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    metrics = {"d_real": torch.sigmoid(real_logits).mean().detach(), "d_fake": torch.sigmoid(fake_logits).mean().detach()}
    return loss, metrics


def sync_av_loss(audio: torch.Tensor, video: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """d_av = −(1/S) Σ_i log cos(F_a(a_i), F_v(Î_i)) (Eq. 9): binary cross-entropy with label 1
    on the cosine similarity of each generated segment and its audio.

    Args:
        audio, video: ``(..., S, D)`` L2-normalised embeddings of the same segments.
        eps: the cosine is clamped to ``[eps, 1]`` before the log (as Wav2Lip's ReLU'd cosine:
            a segment with a negative cosine gets loss −log eps and no gradient through it).
    Returns:
        The mean over segments (and any leading dimensions).
    """
    cosine = (audio * video).sum(dim=-1)
    return -cosine.clamp(eps, 1.0).log().mean()


def sync_vv_loss(generated: torch.Tensor, real: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """d_vv (Eq. 10): each generated segment Î_i must be closer to its own ground-truth segment
    I_i than to the other ground-truth segments I_j of the same window:
    ``−(1/S) Σ_i log( exp(cos(F_v(Î_i), F_v(I_i))) / Σ_j exp(cos(F_v(Î_i), F_v(I_j))) )``.

    Args:
        generated, real: ``(B, S, D)`` L2-normalised video embeddings of S segments per window
            (row i of both is the same segment position); S >= 2 for the loss to mean anything.
        temperature: the cosine is divided by it before the softmax (1.0: the paper's form).
    Returns:
        Mean cross-entropy over the B·S generated segments.
    """
    if generated.shape != real.shape or generated.ndim != 3:
        raise ValueError(f"generated {tuple(generated.shape)} and real {tuple(real.shape)} must both be (B, S, D)")
    logits = torch.einsum("bid,bjd->bij", generated, real) / temperature  # (B, S, S)
    target = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


__all__ += ["discriminator_loss", "generator_gan_loss", "reconstruction_loss", "sync_av_loss", "sync_vv_loss"]


# --- Audio-to-Lip pre-training (cals.train.a2l): Park et al. MM'23, Sec. 3.1 -------------------


def masked_unit_loss(predicted: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """L_a2l: squared error summed over the unit dimensions, averaged over masked frames only
    (the paper's sum over t in M, divided by |M| so the scale does not depend on batch size).

    Args:
        predicted, target: ``(B, T, D)`` float lip units (predicted by A2L, and from the shards).
        masked: ``(B, T)`` bool, True on the masked frames (the only ones that count).
    Returns:
        A scalar.
    """
    per_frame = (predicted - target).pow(2).sum(dim=-1)
    return per_frame[masked].mean()


__all__ += ["masked_unit_loss"]
