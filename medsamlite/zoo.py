"""The built-in model registry entries (torch-free: listing models imports no torch)."""
from .config import ModelConfig
from .registry import register_model

register_model(ModelConfig(
    name="litemedsam", encoder="tinyvit_medsam", input_size=256, pretrained="litemedsam",
    description="LiteMedSAM: TinyViT-5M (stride 4) + SAM heads, the CVPR 2024 task's baseline"))
register_model(ModelConfig(
    name="efficientvit_sam_l0", encoder="efficientvit_l0", input_size=512, decoder_norm_eps=1e-6,
    description="EfficientViT-SAM L0 at 512, prompts in the 512 frame (MedficientSAM)"))
register_model(ModelConfig(
    name="efficientvit_sam_l1", encoder="efficientvit_l1", input_size=512, decoder_norm_eps=1e-6,
    description="EfficientViT-SAM L1 at 512, prompts in the 512 frame (MedficientSAM)"))
register_model(ModelConfig(
    name="efficientvit_sam_l0_256", encoder="efficientvit_l0", input_size=256, decoder_norm_eps=1e-6,
    description="EfficientViT-SAM L0 at 256, prompts in the 256 frame (DAFT)"))
register_model(ModelConfig(
    name="repvit_m0_6_medsam", encoder="repvit_m0_6_medsam", input_size=256,
    description="RepViT-M0.6 student, every stride 1 after the stem (MedSAM on Laptop, Yang et al.)"))
register_model(ModelConfig(
    name="swin_t_medsam", encoder="swin_t_medsam", input_size=256,
    description="Swin-T teacher, patch 1, absolute position embedding (MedSAM on Laptop, Yang et al.)"))
