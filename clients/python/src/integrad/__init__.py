"""Python client of integrad: Integrated Gradients for ONNX models, served over gRPC.

    import integrad
    client = integrad.Client("127.0.0.1:50051")
    e = client.explain(model="penguins", features={...})
    e.attributions, e.features, e.to_shap()
    x = client.explain("photo.png", technique="xrai")
    client.evaluate("photo.png", saliency=x, metrics=["deletion", "insertion"]).auc

The gRPC stubs themselves are `integrad.v1.explainer_pb2` and `integrad.v1.explainer_pb2_grpc`,
generated from the server's proto/ when this package was built.
"""

from ._client import Client, Error
from ._requests import (
    blur_baseline,
    evaluate_request,
    explain_request,
    reference_baseline,
    text_baseline,
    uniform_baseline,
)
from ._types import (
    Curve,
    Evaluation,
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
    XraiRegion,
)

__all__ = [
    "Client",
    "Curve",
    "Error",
    "Evaluation",
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
    "XraiRegion",
    "blur_baseline",
    "evaluate_request",
    "explain_request",
    "reference_baseline",
    "text_baseline",
    "uniform_baseline",
]
