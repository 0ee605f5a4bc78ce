"""KServe's own Python SDK against integrad's HTTP API: the V1 REST client's liveness,
readiness, predict and explain calls, and its error for an unknown model.

Usage: kserve_client.py BASE_URL ROW_JSON
Prints one JSON line with what the SDK returned, for the Rust test to check against gRPC.
"""

import asyncio
import json
import sys

import httpx
from kserve import InferenceRESTClient, RESTConfig


async def main(base_url: str, row: dict) -> dict:
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    body = {"instances": [row]}
    explain = {**body, "parameters": {"steps": 16, "method": "gauss-legendre", "target": "Adelie"}}
    result = {
        "live": await v1.is_server_live(base_url),
        "ready": await v2.is_server_ready(base_url),
        "model_ready": await v1.is_model_ready(base_url, "penguins"),
        "predict": await v1.infer(base_url, body, model_name="penguins"),
        "explain": await v1.explain(base_url, "penguins", explain),
    }
    try:
        await v1.explain(base_url, "no-such-model", explain)
        result["unknown_model"] = None
    except httpx.HTTPStatusError as error:
        result["unknown_model"] = error.response.status_code
    return result


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], json.loads(sys.argv[2])))))
