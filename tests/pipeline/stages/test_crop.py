import numpy as np

from pipeline.stages.crop import CropParams, crop_frame, crop_square


def test_square_has_margin_and_moves_down_for_the_chin():
    x0, y0, x1, y1 = crop_square((100, 100, 200, 220), 1000, 1000, CropParams(margin=1.5, shift_down=0.1))
    assert x1 - x0 == y1 - y0 == 180  # 1.5 x the larger side (120)
    assert (x0 + x1) / 2 == 150
    assert (y0 + y1) / 2 == 160 + 12  # centre + 0.1 x height


def test_square_is_clamped_inside_when_it_fits():
    x0, y0, x1, y1 = crop_square((0, 0, 100, 100), 300, 300, CropParams(margin=1.6, shift_down=0))
    assert (x0, y0) == (0, 0) and x1 - x0 == 160


def test_square_larger_than_frame_is_black_padded():
    frame = np.full((100, 100, 3), 200, np.uint8)
    square = crop_square((10, 10, 90, 90), 100, 100, CropParams(margin=2.0, shift_down=0))
    assert square[2] - square[0] == 160
    crop = crop_frame(frame, square, 128)
    assert crop.shape == (128, 128, 3) and crop.dtype == np.uint8
    assert crop[64, 64].tolist() == [200, 200, 200]
    assert crop[2, 2].tolist() == [0, 0, 0]


def test_crop_content_is_the_box_content():
    frame = np.zeros((400, 400, 3), np.uint8)
    frame[100:300, 100:300] = (255, 0, 0)
    crop = crop_frame(frame, (100.0, 100.0, 300.0, 300.0), 128)
    assert (crop[..., 0] == 255).all() and (crop[..., 1:] == 0).all()
