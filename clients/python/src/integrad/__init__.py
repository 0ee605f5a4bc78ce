"""Python client of integrad: Integrated Gradients for ONNX models, served over gRPC.

    import integrad
    client = integrad.Client("127.0.0.1:50051")
    e = client.explain(model="penguins", features={...})
    e.attributions, e.features, e.to_shap()

The gRPC stubs themselves are `integrad.v1.explainer_pb2` and `integrad.v1.explainer_pb2_grpc`,
generated from the server's proto/ when this package was built.
"""

from ._client import Client, Error
from ._requests import (
    blur_baseline,
    explain_request,
    reference_baseline,
    text_baseline,
    uniform_baseline,
)
from ._types import (
    Explanation,
    FeatureAttribution,
    ModelInfo,
    PathPoint,
    Prediction,
    PredictorCheck,
    PredictResult,
    Progress,
    TensorInfo,
    TokenAttribution,
    WordAttribution,
)

__all__ = [
    "Client",
    "Error",
    "Explanation",
    "FeatureAttribution",
    "ModelInfo",
    "PathPoint",
    "Prediction",
    "PredictorCheck",
    "PredictResult",
    "Progress",
    "TensorInfo",
    "TokenAttribution",
    "WordAttribution",
    "blur_baseline",
    "explain_request",
    "reference_baseline",
    "text_baseline",
    "uniform_baseline",
]
