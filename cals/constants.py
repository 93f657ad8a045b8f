"""The one home of the project's timing and size constants.

Every other module imports these; derived ratios are computed here, never typed as literals.
"""

from typing import Final

#: Video frame rate of every prepared clip, frames per second (constant frame rate).
FPS: Final[int] = 25
#: Audio sample rate of every prepared clip, Hz (mono, int16 in the shards).
SAMPLE_RATE: Final[int] = 16_000
#: Audio samples that belong to one video frame: 16000 / 25 = 640.
AUDIO_SAMPLES_PER_FRAME: Final[int] = SAMPLE_RATE // FPS

#: Mel analysis window length in samples (25 ms at 16 kHz).
MEL_WINDOW: Final[int] = 400
#: Mel hop in samples (10 ms at 16 kHz): 100 mel rows per second.
MEL_HOP: Final[int] = 160
#: FFT size of the mel analysis.
MEL_N_FFT: Final[int] = 400
#: Number of mel bins.
N_MELS: Final[int] = 80
#: Mel rows that belong to one video frame: 640 / 160 = 4 (rows 4t..4t+3 belong to frame t).
MEL_ROWS_PER_FRAME: Final[int] = AUDIO_SAMPLES_PER_FRAME // MEL_HOP

#: Side of the square face crop stored in the shards, pixels.
CROP_SIZE: Final[int] = 128

#: The pose prior's mask line: rows MASK_TOP_ROW .. CROP_SIZE - 1 of a crop (the lower half) are
#: hidden from the generator (:func:`cals.models.l2f.pose_prior`), painted by it and pasted back
#: (:func:`cals.inference.paste_face`). The crop geometry (:class:`pipeline.stages.crop.CropParams`)
#: puts the top of the upper lip below it, by measurement (docs/shard-format.md).
MASK_TOP_ROW: Final[int] = CROP_SIZE // 2
#: Rows the top of the upper lip should stay below the mask line: ``cals-prep verify`` warns on a
#: clip whose lip-top 1st percentile is above MASK_TOP_ROW + MASK_LIP_MARGIN_ROWS.
MASK_LIP_MARGIN_ROWS: Final[int] = 3
#: Crops of each prepared clip that FaceMesh measures the lip-top row on (evenly spaced, first
#: and last included): one per LIP_TOP_FRAMES_PER_SAMPLE frames (1 per second), at least
#: LIP_TOP_MIN_SAMPLES, at most LIP_TOP_MAX_SAMPLES, never more than the clip's frames
#: (:func:`pipeline.prepare_clip.lip_top_samples`). Why: FaceMesh costs 6-8 ms per 128x128
#: crop on one core, and 16 crops per 2 s clip were 73 % of ``--detector none`` prep (BENCHMARKS.md,
#: issue 12); a 2 s clip now takes 4 (~25-30 ms). Measured against
#: FaceMesh on every crop (bench/lip_top_samples.py, the 7 talking fixture clips, rows of 128): on
#: every 2 s window of them, 4 crops move the median by at most 2.4 rows (mean 0.6) and p1 by at most
#: 3.8 (mean 1.2), against 0.65 / 1.3 for 16 crops; 3 crops move p1 up to 7.2, 6 crops 3.4 (4 is
#: the knee). On the whole clips (5-20 s: 5-16 crops) median at most 1.9, p1 at most 2.9 (16
#: crops: 1.0, 1.8). The lip top is a per-clip check (``cals-prep verify`` warns 3 rows below the
#: mask line), so a few rows on a 2 s clip is the price of not paying FaceMesh on 16 of its 50 frames.
LIP_TOP_FRAMES_PER_SAMPLE: Final[int] = FPS
LIP_TOP_MIN_SAMPLES: Final[int] = 4
LIP_TOP_MAX_SAMPLES: Final[int] = 16
#: FaceMesh landmarks along the top edge of the upper lip (cupid's bow 0, 37, 267 and 39, 269
#: beside it): the lip-top row of a crop is the smallest y among them.
UPPER_LIP_TOP_LANDMARKS: Final[tuple[int, ...]] = (0, 37, 267, 39, 269)

#: Frames in one lip-motion window (SyncNet input), centred on the frame it describes.
LIP_WINDOW_FRAMES: Final[int] = 5

assert AUDIO_SAMPLES_PER_FRAME * FPS == SAMPLE_RATE, "sample rate must be a multiple of fps"
assert MEL_ROWS_PER_FRAME * MEL_HOP == AUDIO_SAMPLES_PER_FRAME, "hop must divide samples/frame"

# --- SyncNet scorer (syncnet_python's released syncnet_v2.model and its MFCC front end) ---

#: Side of the square frames SyncNet's lip stream reads, pixels.
SYNCNET_FRAME_SIZE: Final[int] = 224
#: Length of SyncNet's audio and lip embeddings.
SYNCNET_EMBED_DIM: Final[int] = 1024
#: Largest audio/video shift the scorer searches, video frames either way (syncnet_python's
#: ``--vshift`` default): 2 * 15 + 1 = 31 candidate offsets.
SYNCNET_VSHIFT: Final[int] = 15
#: Windows per forward pass (syncnet_python's ``--batch_size`` default).
SYNCNET_BATCH_SIZE: Final[int] = 20
#: Median-filter kernel (windows) of the frame-wise confidence syncnet_python's ``evaluate`` prints.
SYNCNET_FRAMEWISE_MEDIAN: Final[int] = 9
#: The sync filter's default limits (``--max-offset``, ``--min-conf``): keep a clip whose AV
#: offset is at most 3 video frames (120 ms) either way and whose SyncNet confidence is >= 3.0.
SYNC_MAX_OFFSET: Final[int] = 3
SYNC_MIN_CONF: Final[float] = 3.0
#: ``eps`` that torch.nn.functional.pairwise_distance adds to the difference before the norm.
SYNCNET_PAIRWISE_EPS: Final[float] = 1e-6

#: MFCC analysis window, samples (25 ms at 16 kHz; python_speech_features' ``winlen=0.025``).
MFCC_WINDOW: Final[int] = 400
#: MFCC hop, samples (10 ms at 16 kHz; ``winstep=0.01``): 100 MFCC rows per second.
MFCC_HOP: Final[int] = 160
#: MFCC FFT size (the next power of two above the window; ``nfft=512``).
MFCC_N_FFT: Final[int] = 512
#: Triangular filters of the MFCC filterbank (``nfilt=26``).
MFCC_N_FILTERS: Final[int] = 26
#: Cepstral coefficients kept (``numcep=13``).
MFCC_N_CEPS: Final[int] = 13
#: Cepstral lifter coefficient (``ceplifter=22``).
MFCC_LIFTER: Final[int] = 22
#: Pre-emphasis coefficient of the MFCC front end (``preemph=0.97``).
MFCC_PREEMPHASIS: Final[float] = 0.97
#: MFCC rows per video frame: 640 / 160 = 4 (row 4t starts at frame t's first sample).
MFCC_ROWS_PER_FRAME: Final[int] = AUDIO_SAMPLES_PER_FRAME // MFCC_HOP
#: MFCC rows of one SyncNet audio window (5 frames x 4 = 20 rows, 0.2 s).
SYNCNET_MFCC_ROWS: Final[int] = LIP_WINDOW_FRAMES * MFCC_ROWS_PER_FRAME

assert MFCC_ROWS_PER_FRAME * MFCC_HOP == AUDIO_SAMPLES_PER_FRAME, "MFCC hop must divide samples/frame"

# --- Evaluation metrics (cals.metrics) and paste-back (cals.inference) ---

#: Peak value of 8-bit images, for PSNR.
PIXEL_MAX: Final[int] = 255
#: PSNR given to a frame identical to its reference (MSE 0, PSNR +inf) before averaging, dB.
#: Any non-identical pair of 128x128x3 uint8 frames scores at most 10·log10(255² · 49152) =
#: 95.05 dB (one pixel channel off by one), so the cap changes only identical frames.
PSNR_CAP_DB: Final[float] = 100.0
#: SSIM (Wang et al. 2004): Gaussian window side, pixels, and its standard deviation.
SSIM_WINDOW: Final[int] = 11
SSIM_SIGMA: Final[float] = 1.5
#: SSIM stabilisers: C1 = (K1·L)², C2 = (K2·L)² with L = PIXEL_MAX.
SSIM_K1: Final[float] = 0.01
SSIM_K2: Final[float] = 0.03
#: Audio-dependence rows of cals-eval: the clip's own audio moved this many video frames later
#: (circularly), more than SyncNet's ±SYNCNET_VSHIFT offset search, so LSE's best offset cannot
#: find the shifted sync again; an audio-driven model loses to its true-audio row.
AUDIO_SHIFT_FRAMES: Final[int] = SYNCNET_VSHIFT + 5
#: FaceMesh indices of the mouth aperture (inner lips: upper 13, lower 14) and of the face size
#: it is divided by (the outer eye corners 33 and 263: inter-ocular distance).
APERTURE_LANDMARKS: Final[tuple[int, int]] = (13, 14)
EYE_CORNER_LANDMARKS: Final[tuple[int, int]] = (33, 263)
#: Feathered seam of a generated face pasted back into its frame: the blend weight ramps from
#: 0 at the crop box's edge to 1 at this share of the box side inside it.
PASTE_FEATHER: Final[float] = 0.1

# --- CALS training windows (cals.stream, cals.train.cals) ---

#: A training window's reference frame is drawn outside [start - M, start + W + M): more than M
#: frames from every target frame (M = 5: one sync-critic segment, 0.2 s), so no target sees its
#: own mouth, or one of the nearly identical mouths next to it, in the identity input.
REFERENCE_MARGIN_FRAMES: Final[int] = 5
