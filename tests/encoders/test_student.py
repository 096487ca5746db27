"""The students medsamlite distils are proven against the teacher they start from (they have no outside reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import medsamlite
from conftest import golden_state_dict
from medsamlite.encoders.tinyvit import TinyVitSamS8, init_from_teacher


def _teacher():
    return medsamlite.create_model("litemedsam", checkpoint=golden_state_dict("litemedsam")).image_encoder


def test_s8_student_with_every_block_is_the_teacher_on_the_half_resolution_image_then_nearest_upsampled():
    teacher = _teacher()
    student = TinyVitSamS8(depths=(2, 2, 6, 2)).eval()
    init_from_teacher(student, teacher)
    image = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        half = F.avg_pool2d(image, 2)
        expected = F.interpolate(teacher.neck(teacher.forward_features(half)), scale_factor=2, mode="nearest")
        torch.testing.assert_close(student(image), expected, rtol=1e-5, atol=1e-5)


def test_s8_student_takes_evenly_spaced_teacher_blocks_first_and_last_included():
    teacher = _teacher()
    student = medsamlite.create_model("litemedsam_s8").image_encoder
    init_from_teacher(student, teacher)
    kept = [teacher.stages[2].blocks[i] for i in (0, 5)]
    for ours, theirs in zip(student.stages[2].blocks, kept):
        for (name, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    assert torch.equal(student.neck[2].weight, teacher.neck[2].weight)


def test_registered_student_names_its_teacher_and_runs_about_a_fifth_of_its_arithmetic():
    from torch.utils.flop_counter import FlopCounterMode

    spec = medsamlite.get_model_spec("litemedsam_s8")
    assert spec.distilled_from == "litemedsam" and spec.golden is None
    flops = {}
    for name in ("litemedsam", "litemedsam_s8"):
        encoder = medsamlite.create_model(name).image_encoder
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            encoder(torch.rand(1, 3, 256, 256))
        flops[name] = counter.get_total_flops()
    assert 4.5 < flops["litemedsam"] / flops["litemedsam_s8"] < 6.5
