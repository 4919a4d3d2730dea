"""KS-Fusion model: encoders, cross-modal deformable attention, the fused model."""

from ksmodel.model.deform_attention import DeformableCrossAttention, rpb_bias
from ksmodel.model.encoders import GeneEncoder, PatchProjection, Teacher
from ksmodel.model.ksfusion import KSFusion, KSOutput

__all__ = ["DeformableCrossAttention", "GeneEncoder", "KSFusion", "KSOutput", "PatchProjection",
           "Teacher", "rpb_bias"]
