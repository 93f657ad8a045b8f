"""PSNR, SSIM and LMD against independent computations (scipy's Gaussian filter, closed forms,
scikit-image when it is installed) and one real FaceMesh run on a fixture face."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cals.metrics import (
    LIP_LANDMARKS,
    MouthLandmarker,
    landmark_distance,
    psnr,
    psnr_frames,
    ssim,
    ssim_frames,
)
from tests.conftest import SHARED

FACE_IMAGE = SHARED / "fixtures" / "images" / "face_woman_sadtalker_happy.png"


def noisy_pair(seed: int, frames: int = 2, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    noise = rng.normal(0, 20, real.shape)
    generated = np.clip(real + noise, 0, 255).astype(np.uint8)
    return generated, real


# --- PSNR ---


def reference_psnr(a: np.ndarray, b: np.ndarray) -> float:
    """One frame, with Python integers: 20·log10(255) - 10·log10(sum of squares / count)."""
    squares = sum(int(x) ** 2 for x in (a.astype(np.int64) - b.astype(np.int64)).ravel())
    if squares == 0:
        return math.inf
    return 20 * math.log10(255) - 10 * math.log10(squares / a.size)


def test_psnr_matches_an_integer_computation_per_frame_and_averages_frames():
    generated, real = noisy_pair(0, size=16)
    expected = [reference_psnr(g, r) for g, r in zip(generated, real)]
    assert np.allclose(psnr_frames(generated, real), expected, rtol=0, atol=1e-9)
    assert psnr(generated, real) == pytest.approx(np.mean(expected), abs=1e-9)


def test_psnr_of_constant_images_is_the_closed_form():
    a = np.full((32, 32, 3), 100, np.uint8)
    b = np.full((32, 32, 3), 110, np.uint8)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)  # 28.13 dB


def test_identical_frames_are_inf_per_frame_and_capped_at_100_db_in_the_mean():
    generated, real = noisy_pair(1, frames=3, size=16)
    generated[1] = real[1]
    per_frame = psnr_frames(generated, real)
    assert np.isinf(per_frame[1]) and np.isfinite(per_frame[[0, 2]]).all()
    assert psnr(generated, real) == pytest.approx((per_frame[0] + 100.0 + per_frame[2]) / 3)
    assert psnr(real, real) == 100.0
    # the cap only changes identical frames: one channel of one pixel off by one is below it
    off_by_one = real[:1].copy()
    off_by_one[0, 0, 0, 0] ^= 1
    assert psnr_frames(off_by_one, real[:1])[0] == pytest.approx(10 * math.log10(255**2 * real[0].size))


# --- SSIM ---


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Another way to Wang et al.'s SSIM: scipy's Gaussian filter (σ 1.5, truncated at 3.5σ → the
    11x11 window) on the full image, then the 5-pixel border (where the window leaves the image)
    cropped, per channel, averaged over channels (scikit-image's recipe)."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for channel in range(a.shape[-1]):
        x, y = a[..., channel].astype(np.float64), b[..., channel].astype(np.float64)
        blur = lambda image: gaussian_filter(image, sigma=1.5, truncate=3.5)  # noqa: E731
        ux, uy = blur(x), blur(y)
        vx, vy, vxy = blur(x * x) - ux * ux, blur(y * y) - uy * uy, blur(x * y) - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_ssim_matches_scipy_gaussian_reference():
    generated, real = noisy_pair(2, frames=3, size=40)
    expected = [reference_ssim(g, r) for g, r in zip(generated, real)]
    assert np.allclose(ssim_frames(generated, real), expected, rtol=0, atol=1e-10)
    assert ssim(generated, real) == pytest.approx(np.mean(expected), abs=1e-10)


def test_ssim_of_a_smooth_image_and_its_distortion():
    yy, xx = np.mgrid[0:64, 0:64]
    real = np.stack([(xx * 4) % 256, (yy * 4) % 256, (xx + yy) * 2 % 256], axis=-1).astype(np.uint8)
    generated = np.clip(real.astype(int) + 15, 0, 255).astype(np.uint8)
    assert ssim(generated, real) == pytest.approx(reference_ssim(generated, real), abs=1e-10)
    assert 0.5 < ssim(generated, real) < 1.0


def test_ssim_of_identical_images_is_one():
    _, real = noisy_pair(3, frames=2, size=32)
    assert np.allclose(ssim_frames(real, real), 1.0, rtol=0, atol=1e-12)


def test_ssim_of_constant_images_is_the_closed_form():
    a = np.full((24, 24, 3), 100, np.uint8)
    b = np.full((24, 24, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    expected = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)  # no variance: the luminance term only
    assert ssim(a, b) == pytest.approx(expected, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    generated, real = noisy_pair(4, frames=1, size=48)
    expected = metrics.structural_similarity(
        generated[0], real[0], channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert ssim(generated, real) == pytest.approx(expected, abs=1e-10)


def test_shape_mismatch_and_tiny_frames_are_refused():
    a = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, a[:1])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(a[:, :8, :8], a[:, :8, :8])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a.astype(np.float32))


# --- LMD ---


def test_lip_landmarks_are_facemesh_lips():
    face_mesh = pytest.importorskip("mediapipe").solutions.face_mesh
    assert len(LIP_LANDMARKS) == 40
    assert set(LIP_LANDMARKS) == {i for edge in face_mesh.FACEMESH_LIPS for i in edge}


def test_landmark_distance_of_known_shifts():
    rng = np.random.default_rng(5)
    real = rng.uniform(0, 128, (4, 40, 2))
    generated = real.copy()
    generated[0] += (3.0, 4.0)  # every landmark 5 px away
    generated[1, :20, 0] += 2.0  # half the landmarks 2 px away: mean 1 px
    # frame 2 identical; frame 3 is each landmark moved by its own distance d_i
    distances = np.arange(40, dtype=np.float64) / 10
    angles = rng.uniform(0, 2 * np.pi, 40)
    generated[3] += np.stack([distances * np.cos(angles), distances * np.sin(angles)], axis=1)
    result = landmark_distance(generated, real)
    assert np.allclose(result.per_frame, [5.0, 1.0, 0.0, distances.mean()])
    assert result.value == pytest.approx((5.0 + 1.0 + 0.0 + distances.mean()) / 4)
    assert (result.frames, result.used, result.no_face_generated, result.no_face_real) == (4, 4, 0, 0)


def test_frames_without_a_face_are_excluded_and_counted():
    real = np.zeros((4, 40, 2))
    generated = real + (0.0, 2.0)
    generated[1] = np.nan  # no face in the generated frame
    real[2] = np.nan  # no face in the real frame
    result = landmark_distance(generated, real)
    assert result.value == pytest.approx(2.0)
    assert (result.used, result.no_face_generated, result.no_face_real) == (2, 1, 1)
    assert np.isnan(result.per_frame[[1, 2]]).all()
    nothing = landmark_distance(np.full((2, 40, 2), np.nan), real[:2])
    assert nothing.value is None and nothing.used == 0
    assert nothing.to_dict()["lmd"] is None


@pytest.mark.skipif(not FACE_IMAGE.is_file(), reason=f"fixture image not found at {FACE_IMAGE} (../shared is absent)")
def test_facemesh_finds_the_lips_on_a_128_pixel_face_crop():
    import cv2

    image = cv2.imread(str(FACE_IMAGE), cv2.IMREAD_COLOR)[..., ::-1]
    crop = cv2.resize(np.ascontiguousarray(image), (128, 128), interpolation=cv2.INTER_AREA)
    blank = np.zeros_like(crop)
    with MouthLandmarker() as landmarker:
        points = landmarker(np.stack([crop, blank]))
    assert points.shape == (2, 40, 2)
    lips = points[0]
    assert np.isfinite(lips).all() and np.isnan(points[1]).all()
    # the mouth of a frontal face: lower middle of the crop, a few pixels to a few tens wide
    centre = lips.mean(axis=0)
    assert 40 < centre[0] < 88 and 64 < centre[1] < 120, centre
    assert 10 < np.ptp(lips[:, 0]) < 60
    # LMD of the crop against itself, and against itself shifted by 4 px: ~4 px
    with MouthLandmarker() as landmarker:
        shifted = landmarker(np.roll(crop, 4, axis=1)[None])
    assert landmark_distance(points[:1], points[:1]).value == 0.0
    assert landmark_distance(shifted, points[:1]).value == pytest.approx(4.0, abs=1.0)


def test_lower_half_measures_see_only_the_masked_rows():
    from cals.metrics import lower_l1_frames, lower_psnr_frames, mask_top_row

    real = np.full((2, 128, 128, 3), 100, np.uint8)
    generated = real.copy()
    generated[0, : mask_top_row(128)] = 0  # frame 0: only the given upper rows differ
    generated[1, mask_top_row(128) :] = 151  # frame 1: the mouth rows are off by 51 (0.2)
    assert lower_psnr_frames(generated, real)[0] == math.inf and lower_l1_frames(generated, real)[0] == 0.0
    assert lower_psnr_frames(generated, real)[1] == pytest.approx(10 * math.log10(255**2 / 51**2))
    assert lower_l1_frames(generated, real)[1] == pytest.approx(0.2)


def test_aperture_correlation_of_known_series():
    from cals.metrics import aperture_correlation

    opening = np.array([0.1, 0.3, np.nan, 0.2, 0.4])
    assert aperture_correlation(opening, opening).value == pytest.approx(1.0)
    assert aperture_correlation(opening, 1 - opening).value == pytest.approx(-1.0)
    assert aperture_correlation(opening, opening).used == 4  # the frame without a face is left out
    assert aperture_correlation(np.full(5, 0.2), opening).value is None  # a mouth that never moves
    assert aperture_correlation(opening[:2], np.array([np.nan, 0.1])).value is None


@pytest.mark.skipif(not FACE_IMAGE.is_file(), reason=f"fixture image not found at {FACE_IMAGE} (../shared is absent)")
def test_mouth_aperture_grows_when_the_mouth_is_stretched_open():
    import cv2

    image = cv2.imread(str(FACE_IMAGE), cv2.IMREAD_COLOR)[..., ::-1]
    crop = cv2.resize(np.ascontiguousarray(image), (128, 128), interpolation=cv2.INTER_AREA)
    with MouthLandmarker() as landmarker:
        shape = landmarker.measure(np.stack([crop, np.zeros_like(crop)]))
        lips = shape.lips[0]
        top, bottom = int(lips[:, 1].min()) - 2, int(lips[:, 1].max()) + 2
        opened = crop.copy()  # the lip band stretched to twice its height, downwards
        band = cv2.resize(np.ascontiguousarray(crop[top:bottom]), (128, 2 * (bottom - top)), interpolation=cv2.INTER_CUBIC)
        opened[top : min(128, top + band.shape[0])] = band[: 128 - top]
        stretched = landmarker.measure(opened[None])
    assert shape.lips.shape == (2, 40, 2) and np.isnan(shape.aperture[1])
    assert 0 <= shape.aperture[0] < 1 and stretched.aperture[0] > shape.aperture[0], (shape.aperture, stretched.aperture)


def mouth68_arrangement_problems(points: np.ndarray) -> list[str]:
    """What is wrong with ``(20, 2)`` (x, y) image positions of the 68-point scheme's mouth
    points 48-67 on an upright frontal face (image y downwards): corners outermost, centres
    between them, upper lip above lower lip, left half left of the right half."""
    p = {n: points[n - 48] for n in range(48, 68)}
    problems = []
    outer_x = [p[n][0] for n in range(48, 60)]
    if not (p[48][0] == min(outer_x) and p[54][0] == max(outer_x)):
        problems.append("outer corners 48/54 are not the leftmost/rightmost outer points")
    inner_x = [p[n][0] for n in range(60, 68)]
    if not (p[60][0] == min(inner_x) and p[64][0] == max(inner_x)):
        problems.append("inner corners 60/64 are not the leftmost/rightmost inner points")
    for left, right in ((49, 53), (50, 52), (59, 55), (58, 56), (61, 63), (67, 65)):
        if not p[left][0] < p[right][0]:
            problems.append(f"{left} is not left of {right}")
    for left, centre, right in ((50, 51, 52), (58, 57, 56), (61, 62, 63), (67, 66, 65)):
        if not p[left][0] < p[centre][0] < p[right][0]:
            problems.append(f"{centre} is not between {left} and {right}")
    for upper, lower in ((51, 57), (50, 58), (52, 56), (62, 66), (51, 62), (66, 57)):
        if not p[upper][1] < p[lower][1]:
            problems.append(f"{upper} is not above {lower}")
    return problems


@pytest.mark.skipif(not FACE_IMAGE.is_file(), reason=f"fixture image not found at {FACE_IMAGE} (../shared is absent)")
def test_the_68_point_mouth_mapping_is_arranged_as_the_68_point_scheme_on_a_real_face():
    import cv2

    from cals.metrics import MOUTH68_FACEMESH, MOUTH68_POINTS

    assert len(MOUTH68_FACEMESH) == 20 == len(set(MOUTH68_FACEMESH)) and MOUTH68_POINTS == tuple(range(48, 68))
    image = cv2.imread(str(FACE_IMAGE), cv2.IMREAD_COLOR)[..., ::-1]
    crop = cv2.resize(np.ascontiguousarray(image), (128, 128), interpolation=cv2.INTER_AREA)
    with MouthLandmarker() as landmarker:
        shape = landmarker.measure(crop[None])
    points = shape.mouth68[0]
    assert shape.mouth68.shape == (1, 20, 2) and np.isfinite(points).all()
    assert mouth68_arrangement_problems(points) == []
    # the broken variants: a shuffled table, and the left/right or upper/lower halves swapped
    rng = np.random.default_rng(0)
    assert mouth68_arrangement_problems(points[rng.permutation(20)])
    mirrored = [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
    assert mouth68_arrangement_problems(points[[n - 48 for n in mirrored]])
    flipped = [48, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 60, 67, 66, 65, 64, 63, 62, 61]
    assert mouth68_arrangement_problems(points[[n - 48 for n in flipped]])
