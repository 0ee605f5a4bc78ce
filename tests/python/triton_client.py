"""NVIDIA's stock tritonclient[grpc] against integrad (run by tests/it/oip.rs).

Usage: triton_client.py HOST:PORT MODEL INPUT.npy

Calls live, ready, model ready, server and model metadata, and ModelInfer with the input
(a preprocessed tensor without the batch dimension) as a batch of 1, then two requests that
must fail. Prints one JSON object with what it saw; the Rust test checks it.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def error_status(call):
    """The gRPC status a failing call raised, e.g. "StatusCode.NOT_FOUND"; None if it passed."""
    try:
        call()
    except InferenceServerException as e:
        return e.status()
    return None


def tensors(metadata):
    return [
        {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in metadata
    ]


def main():
    address, model, npy = sys.argv[1:4]
    client = grpcclient.InferenceServerClient(url=address)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
    }
    server = client.get_server_metadata()
    out["server"] = {"name": server.name, "version": server.version}
    metadata = client.get_model_metadata(model)
    out["model"] = {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }

    x = np.load(npy)[None]
    inp = grpcclient.InferInput(metadata.inputs[0].name, list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    output = metadata.outputs[0].name
    result = client.infer(
        model,
        [inp],
        outputs=[grpcclient.InferRequestedOutput(output)],
        request_id="coffee-1",
    )
    logits = result.as_numpy(output)
    out["id"] = result.get_response().id
    out["logits_dtype"] = str(logits.dtype)
    out["logits_shape"] = list(logits.shape)
    out["logits"] = logits.ravel().tolist()

    out["unknown_model_error"] = error_status(lambda: client.infer("no-such-model", [inp]))
    narrow = x[..., :223]
    bad = grpcclient.InferInput(metadata.inputs[0].name, list(narrow.shape), "FP32")
    bad.set_data_from_numpy(np.ascontiguousarray(narrow))
    out["bad_shape_error"] = error_status(lambda: client.infer(model, [bad]))
    # The server keeps serving after refusing those.
    out["ready_after"] = client.is_server_ready()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
