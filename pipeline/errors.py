"""Per-clip failures: a reason code (a manifest column users group by) plus a human detail."""

from __future__ import annotations

#: Reason codes a clip can fail with, and what each means.
REASONS = {
    "empty_file": "the file has zero bytes",
    "unreadable": "ffprobe cannot read the container (not a video, truncated header, bad file)",
    "no_video": "the file has no video stream",
    "bad_window": "the clip's annotated span or crop does not fit the video",
    "no_audio": "the file has no audio stream",
    "decode_error": "ffmpeg failed while decoding",
    "truncated": "ffmpeg decoded far fewer frames than the container's duration promises",
    "too_short": "fewer frames than --min-frames",
    "no_face": "the detector found no face in any examined frame",
    "low_face_coverage": "a face was found in fewer examined frames than --min-face-ratio",
    "no_track": "--tracks all|speaker: no face track of at least --min-track frames (the source row's tracks_dropped says why)",
    "not_speaking": "--tracks speaker: the track is not its scene's speaker (SyncNet confidence below --min-conf or below another track's)",
    "small_face": "the track's median face box is smaller than --min-face-px source pixels",
    "blurry": "the track's crops are blurred: median variance of the Laplacian below --min-sharpness",
    "interpolated": "more of the track's examined frames than --max-interpolated have no detection of their own",
    "out_of_sync": "cals-prep sync: SyncNet's AV offset or confidence is past --max-offset / --min-conf",
    "no_space": "the disk (or quota) filled up while its shard was written; free space and re-run to resume",
    "worker_crash": "the process handling the clip died (e.g. a native crash), retries exhausted",
    "internal_error": "an unexpected exception (a bug: please report it with the detail)",
}


class ClipError(Exception):
    """A clip cannot become a sample. ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
