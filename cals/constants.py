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

#: Frames in one lip-motion window (SyncNet input), centred on the frame it describes.
LIP_WINDOW_FRAMES: Final[int] = 5

assert AUDIO_SAMPLES_PER_FRAME * FPS == SAMPLE_RATE, "sample rate must be a multiple of fps"
assert MEL_ROWS_PER_FRAME * MEL_HOP == AUDIO_SAMPLES_PER_FRAME, "hop must divide samples/frame"
