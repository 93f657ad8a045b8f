"""The lip teacher of CALS training (``--lip-teacher mouth``, :mod:`cals.models.mouth_encoder`)
and the lower-face weight of L_recon: each property is shown with the broken variant it rejects."""

from __future__ import annotations

import pytest
import torch

from cals.constants import MASK_TOP_ROW
from cals.losses import reconstruction_loss
from cals.models.a2l import A2LConfig
from cals.models.cals_model import CalsConfig, CalsModel
from cals.models.l2f import LipToFaceConfig
from cals.models.mouth_encoder import MouthEncoder, MouthEncoderConfig


def test_the_teacher_reads_only_the_lower_face():
    torch.manual_seed(0)
    encoder = MouthEncoder(MouthEncoderConfig(unit_dim=12, code_dim=4)).eval()
    frames = torch.rand(2, 3, 128, 128)
    upper, lower = frames.clone(), frames.clone()
    upper[:, :, :MASK_TOP_ROW] = torch.rand(2, 3, MASK_TOP_ROW, 128)
    lower[:, :, MASK_TOP_ROW:] = torch.rand(2, 3, 128 - MASK_TOP_ROW, 128)
    assert encoder(frames).shape == (2, 12)
    assert torch.equal(encoder(frames), encoder(upper))  # the upper face (what the pose prior shows) is not read
    assert not torch.allclose(encoder(frames), encoder(lower))  # the mouth is
    with pytest.raises(ValueError, match="expected frames"):
        encoder(torch.rand(3, 128, 128))


def test_the_teacher_units_drive_only_the_windows_marked_for_them():
    torch.manual_seed(0)
    a2l = A2LConfig(unit_dim=12, layers=1, d_model=16, ffn=32, heads=2, dropout=0.0)
    model = CalsModel(CalsConfig(a2l=a2l, l2f=LipToFaceConfig(unit_dim=12, widths=(8, 8, 8), lip_channels=8, crop_size=128),
                                 window=3)).eval()
    for film in model.generator.film:  # FiLM starts as the identity: make the units matter at every scale
        torch.nn.init.normal_(film.project.weight)
    mel, real = torch.randn(2, 12, 80), torch.ones(2, 3, dtype=torch.bool)
    reference, prior = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 3, 128, 128)
    teacher = torch.randn(2, 3, 12)
    generated, units = model(mel, real, reference, prior, None, teacher, torch.tensor([True, False]))
    assert torch.allclose(units, model.a2l(mel, real))
    assert torch.allclose(generated[0], model.generator(teacher[:1], reference[:1], prior[:1])[0], atol=1e-6)
    assert torch.allclose(generated[1], model(mel[1:], real[1:], reference[1:], prior[1:])[0], atol=1e-6)
    # the broken variant (teacher units ignored) differs on the teacher's window
    assert not torch.allclose(generated[0], model(mel[:1], real[:1], reference[:1], prior[:1])[0], atol=1e-4)


def test_the_lower_weight_counts_the_mouth_rows_more_at_the_same_scale():
    target = torch.zeros(1, 1, 3, 128, 128)
    upper, lower = target.clone(), target.clone()
    upper[..., :MASK_TOP_ROW, :] = 1.0
    lower[..., MASK_TOP_ROW:, :] = 1.0
    def loss(generated, weight=1.0):
        return float(reconstruction_loss(generated, target, lower_weight=weight))

    assert loss(upper) == pytest.approx(0.5) and loss(lower) == pytest.approx(0.5)  # the paper's plain L1
    assert loss(lower, 3.0) == pytest.approx(0.75) and loss(upper, 3.0) == pytest.approx(0.25)
    assert loss(torch.ones_like(target), 3.0) == pytest.approx(1.0)  # same scale


def test_cals_trains_with_the_teacher_and_resumes_exactly(tmp_path):
    """``cals-train cals --lip-teacher mouth``: the unit MSE is logged, the teacher's weights are
    resume state (a 2+2-step run ends with the weights of a straight 4-step one) and never part
    of the saved model, and the config says which teacher ran."""
    import json

    from cals.models.cals_model import load_cals_model
    from cals.train.checkpoint import load_weights, read_json
    from tests.cals.test_l2f import UNIT, run_cals
    from tests.cals.test_stream import write_dataset

    write_dataset(tmp_path / "d", [[14, 12]], lip_dim=UNIT)
    flags = ["--tiny", "--lip-teacher", "mouth", "--teacher-share", "0.5", "--recon-lower-weight", "2", "--preview-every", "0"]
    straight = run_cals(tmp_path / "d", tmp_path / "a", 4, *flags)
    assert straight.exit_code == 0, straight.output
    assert run_cals(tmp_path / "d", tmp_path / "b", 2, *flags).exit_code == 0
    rest = run_cals(tmp_path / "d", tmp_path / "b", 4, *flags, "--resume")
    assert rest.exit_code == 0, rest.output
    a, b = load_weights(tmp_path / "a"), load_weights(tmp_path / "b")
    assert set(a) == set(b) and not any(name.startswith("teacher") for name in a)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0)
    train = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert all("units" in r for r in train if r["split"] == "train")
    config = read_json(tmp_path / "a" / "config.json")["task_config"]
    assert config["lip_teacher"] == "mouth" and config["loss"]["recon_lower_weight"] == 2.0
    assert load_cals_model(tmp_path / "a").generate(torch.zeros(1, 40, 80), torch.rand(3, 128, 128),
                                                     torch.rand(10, 3, 128, 128)).shape == (10, 3, 128, 128)
    bad = run_cals(tmp_path / "d", tmp_path / "c", 1, "--lip-teacher", "lips")
    assert bad.exit_code != 0 and "lip_teacher must be one of none, mouth" in bad.output, bad.output


def test_normalised_units_keep_the_lip_path_alive():
    """``LipToFaceConfig.unit_norm``: with its first layer's ReLUs all off (what 60 CPU steps did
    to raw units), the raw lip MLP gives the same code whatever the units; the normalised one
    with LeakyReLU still follows them."""
    from cals.models.l2f import LipToFace

    torch.manual_seed(0)
    units = torch.randn(1, 4, 12) * 0.05 + 0.4  # A2L-like: small variation around a common value
    codes = {}
    for norm in (False, True):
        generator = LipToFace(LipToFaceConfig(unit_dim=12, widths=(8, 8), lip_channels=8, unit_norm=norm))
        torch.nn.init.constant_(generator.lip[0].bias, -100.0)  # every unit off, on every frame
        inputs = torch.nn.functional.layer_norm(units, (12,)) if norm else units
        codes[norm] = generator.lip(inputs[0])
    assert torch.allclose(codes[False], codes[False][:1].expand_as(codes[False]))  # the broken variant: deaf
    assert codes[True].std(0).mean() > 1e-3
