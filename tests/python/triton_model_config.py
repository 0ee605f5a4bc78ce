"""NVIDIA's stock tritonclient[grpc] asks integrad for model configurations (run by
tests/it/oip.rs).

Usage: triton_model_config.py HOST:PORT MODEL...

Prints one JSON object: per model, the `config` of get_model_config(MODEL, as_json=True), or
the gRPC status and message it failed with.
"""

import json
import sys

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main():
    address, models = sys.argv[1], sys.argv[2:]
    client = grpcclient.InferenceServerClient(url=address)
    out = {}
    for model in models:
        try:
            out[model] = client.get_model_config(model, as_json=True)["config"]
        except InferenceServerException as e:
            out[model] = {"error": e.status(), "message": e.message()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
