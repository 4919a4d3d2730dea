"""KS-Fusion: encoders, cross-modal deformable attention, subspace streams, the fused model."""

from ksmodel.model._rpb_kernel import rpb_bias
from ksmodel.model.deform_attention import DeformableCrossAttention
from ksmodel.model.encoders import GeneEncoder, PatchProjection, Teacher
from ksmodel.model.ksfusion import KSFusion, KSOutput
from ksmodel.model.shared import SharedTokens
from ksmodel.model.stream import StreamOutput, SubspaceStream

__all__ = ["DeformableCrossAttention", "GeneEncoder", "KSFusion", "KSOutput", "PatchProjection",
           "SharedTokens", "StreamOutput", "SubspaceStream", "Teacher", "rpb_bias"]
