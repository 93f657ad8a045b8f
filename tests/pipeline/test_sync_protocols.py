"""The syncnet_python and precropped scoring protocols (pipeline/sync_protocols.py) against
syncnet_python's own arithmetic, re-implemented here from its run_pipeline.py / SyncNetInstance.py
(crop_video, track_shot, evaluate), and against the broken variants they must not equal."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
import torch
from scipy import signal
from scipy.io import wavfile

from cals.mfcc import mfcc
from cals.models.syncnet_v2 import SyncNetV2
from pipeline.stages.detect import Detection
from pipeline.sync_protocols import SyncnetPythonParams, crop_frame, smooth_track, track_shot
from pipeline.sync_report import score_path
from tests.conftest import FIXTURE_VIDEO, needs_fixtures

SYNCNET_EXAMPLE = FIXTURE_VIDEO / "syncnet_example.avi"
PARAMS = SyncnetPythonParams()


def reference_crop_video(image: np.ndarray, boxes: np.ndarray, crop_scale: float = 0.4) -> list[np.ndarray]:
    """syncnet_python's crop_video loop, transcribed (one image for every box)."""
    dets = {"x": [], "y": [], "s": []}
    for det in boxes:
        dets["s"].append(max((det[3] - det[1]), (det[2] - det[0])) / 2)
        dets["y"].append((det[1] + det[3]) / 2)
        dets["x"].append((det[0] + det[2]) / 2)
    for key in dets:
        dets[key] = signal.medfilt(dets[key], kernel_size=13)
    out = []
    for fidx in range(len(boxes)):
        cs, bs = crop_scale, dets["s"][fidx]
        bsi = int(bs * (1 + 2 * cs))
        frame = np.pad(image, ((bsi, bsi), (bsi, bsi), (0, 0)), "constant", constant_values=(110, 110))
        my, mx = dets["y"][fidx] + bsi, dets["x"][fidx] + bsi
        face = frame[int(my - bs) : int(my + bs * (1 + 2 * cs)), int(mx - bs * (1 + cs)) : int(mx + bs * (1 + cs))]
        out.append(cv2.resize(face, (224, 224)))
    return out


def synthetic_boxes(count: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A jittering, drifting face box that reaches past the frame's left and top edges."""
    centre = np.stack([np.linspace(20, width - 30, count), np.linspace(15, height - 10, count)], axis=1)
    side = np.linspace(60, 150, count)[:, None] + rng.normal(0, 4, (count, 1))
    centre = centre + rng.normal(0, 3, centre.shape)
    return np.concatenate([centre - side / 2, centre + side / 2 * np.array([1.0, 1.2])], axis=1)


def our_crops(image: np.ndarray, boxes: np.ndarray, params: SyncnetPythonParams = PARAMS) -> list[np.ndarray]:
    half, cx, cy = smooth_track(boxes, params.smooth_kernel)
    return [crop_frame(image, half[i], cx[i], cy[i], params) for i in range(len(boxes))]


def test_crops_equal_syncnet_python_crop_video_pixel_for_pixel():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    boxes = synthetic_boxes(40, rng, 320, 240)
    ours, reference = our_crops(image, boxes), reference_crop_video(image, boxes)
    assert len(ours) == len(reference) == 40
    for mine, theirs in zip(ours, reference):
        assert mine.shape == (224, 224, 3) and np.array_equal(mine, theirs)
    # the padding grey is in the crops that reach past the edge (the first boxes do)
    assert (ours[0] == 110).all(axis=-1).any()
    # a broken variant (another margin, or no median filter) is told apart
    assert not np.array_equal(our_crops(image, boxes, SyncnetPythonParams(crop_scale=0.5))[10], reference[10])
    assert not np.array_equal(our_crops(image, boxes, SyncnetPythonParams(smooth_kernel=1))[10], reference[10])


def face(box) -> list[Detection]:
    return [Detection(tuple(float(v) for v in box), 1.0)]


def test_track_shot_keeps_long_large_tracks_and_bridges_25_missed_frames():
    params = SyncnetPythonParams(min_track=10, min_face_size=50)
    big, small = (100, 100, 220, 230), (400, 50, 440, 90)
    faces = []
    for frame in range(60):
        dets = face(big) if frame % 20 != 5 else []  # one missed detection every 20 frames
        if frame < 40:
            dets = dets + face(small)  # a second, small face: tracked, then dropped for its size
        faces.append((frame, dets))
    (track,) = track_shot(faces, params)
    assert track.frames.tolist() == list(range(60))
    assert np.allclose(track.boxes, np.array(big, float))  # interpolated over the missed frames
    # a gap of more than num_failed_det frames ends the track: the rest starts a new one
    gap = [(f, face(big)) for f in range(12)] + [(f, face(big)) for f in range(12 + 26, 12 + 26 + 12)]
    tracks = track_shot(gap, params)
    assert [t.frames[0] for t in tracks] == [0, 38]
    # too few detections (min_track is "more than") → no track
    assert track_shot([(f, face(big)) for f in range(10)], params) == []


def syncnet_python_curve(video, weights, tmp_path) -> np.ndarray:
    """SyncNetInstance.evaluate's mean-distance curve: ffmpeg JPEG dump (default quality) read by
    cv2.imread, ffmpeg 16 kHz wav, windows of 5 frames / 20 MFCC rows, float32 pairwise distances."""
    frames_dir = tmp_path / "ref"
    frames_dir.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-threads", "1", "-f", "image2", str(frames_dir / "%06d.jpg")], check=True)
    wav = tmp_path / "audio.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-async", "1", "-ac", "1", "-vn", "-acodec", "pcm_s16le", "-ar", "16000", str(wav)], check=True)
    images = [cv2.imread(str(f)) for f in sorted(frames_dir.glob("*.jpg"))]
    _, audio = wavfile.read(wav)
    im = torch.from_numpy(np.stack(images, axis=3)[None].transpose(0, 3, 4, 1, 2).astype(float)).float()
    cc = torch.from_numpy(mfcc(audio).T[None, None].astype(float)).float()
    last = min(len(images), len(audio) // 640) - 5
    model = SyncNetV2()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, last, 20):
            starts = range(i, min(last, i + 20))
            im_feat.append(model.forward_lip(torch.cat([im[:, :, v : v + 5] for v in starts])))
            cc_feat.append(model.forward_aud(torch.cat([cc[:, :, :, v * 4 : v * 4 + 20] for v in starts])))
    im_feat, cc_feat = torch.cat(im_feat), torch.cat(cc_feat)
    padded = torch.nn.functional.pad(cc_feat, (0, 0, 15, 15))
    dists = [torch.nn.functional.pairwise_distance(im_feat[[i]].repeat(31, 1), padded[i : i + 31]) for i in range(len(im_feat))]
    return torch.mean(torch.stack(dists, 1), 1).numpy()


@pytest.mark.slow
@needs_fixtures
@pytest.mark.skipif(not SYNCNET_EXAMPLE.is_file(), reason=f"{SYNCNET_EXAMPLE} is absent")
def test_precropped_gives_syncnet_pythons_curve_on_the_example(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "random_syncnet_v2.model"
    torch.save(SyncNetV2().state_dict(), weights)
    reference = syncnet_python_curve(SYNCNET_EXAMPLE, weights, tmp_path)

    out = tmp_path / "precropped.json"
    report = score_path(SYNCNET_EXAMPLE, weights, json_out=out, protocol="precropped")
    (clip,) = json.loads(out.read_text())["clips"]
    assert report.protocol == "precropped" and clip["error"] is None
    ours = np.array(clip["mean_dists"])
    # residual: float64 distances (ours) vs float32 (theirs) and batch-size-1 vs 20 matmuls
    assert np.abs(ours / reference - 1).max() < 2e-3, np.abs(ours / reference - 1).max()
    assert len(clip["framewise_conf"]) == clip["num_windows"] == 317 - 5

    # the broken variant the issue describes (prep's 128x128 q95 crop, enlarged back) is told apart
    shards = score_path(SYNCNET_EXAMPLE, weights, protocol="shards", detector="none")
    broken = shards.results[0].score.mean_dists
    assert np.abs(broken / reference - 1).max() > 2e-3


def test_the_syncnet_python_detector_is_s3fd_when_its_weights_are_given(tmp_path):
    """--s3fd: syncnet_python's S3FD at facedet_scale 0.25 and conf 0.9 (seeded random weights with
    the face logit raised, so boxes come out), boxes in the full frame's pixels."""
    from cals.models.s3fd import S3FDNet
    from pipeline.stages.detect import SyncnetS3fdDetector
    from pipeline.sync_protocols import ScaledDetector, syncnet_python_detector

    torch.manual_seed(0)
    net = S3FDNet()
    with torch.no_grad():
        for head in net.conf:
            head.bias[-1] += 4.0
    weights = tmp_path / "sfd_face.pth"
    torch.save(net.state_dict(), weights)
    detector = syncnet_python_detector(PARAMS, s3fd=weights)
    assert isinstance(detector, SyncnetS3fdDetector) and not isinstance(detector, ScaledDetector)
    assert detector.scales == (PARAMS.facedet_scale,) and detector.conf_th == PARAMS.det_conf
    assert "s3fd" in detector.name and "0.25" in detector.name
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    (faces,) = detector([frame])
    assert faces and all(isinstance(f, Detection) and f.score > PARAMS.det_conf for f in faces)
    # in full-frame pixels: S3FD's own rows at the same scale, unchanged
    rows = detector._model.detect(frame, PARAMS.det_conf, [PARAMS.facedet_scale])
    np.testing.assert_allclose([f.box for f in faces], rows[:, :4])
    assert max(f.box[2] for f in faces) > 80  # not the 80x60 scaled copy's pixels
