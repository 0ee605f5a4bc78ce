"""The Client: integrad's gRPC API as Python calls."""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Iterator, List, Mapping, Optional, Union

import grpc

from . import _requests
from ._requests import ImageLike, InputValue, evaluate_request, explain_request
from ._types import Evaluation, Explanation, ModelInfo, PredictResult, Progress
from .v1 import explainer_pb2 as pb
from .v1 import explainer_pb2_grpc as pb_grpc

TlsLike = Union[bool, bytes, str, "os.PathLike[str]", grpc.ChannelCredentials, None]
Event = Union[Progress, Explanation]


class Error(Exception):
    """A call the server refused or that failed: `code` is the grpc.StatusCode (NOT_FOUND,
    INVALID_ARGUMENT, UNAUTHENTICATED, ...), `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


def _translate(rpc_error: grpc.RpcError) -> Error:
    return Error(rpc_error.code(), rpc_error.details() or "")


def _credentials(tls: TlsLike) -> Optional[grpc.ChannelCredentials]:
    """Channel credentials: None for plaintext; True trusts the system's roots; bytes are PEM
    root certificates, a str or path a file of them; ChannelCredentials (mutual TLS, say)
    are used as given."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, (bytes, bytearray)):
        return grpc.ssl_channel_credentials(root_certificates=bytes(tls))
    with open(tls, "rb") as f:
        return grpc.ssl_channel_credentials(root_certificates=f.read())


class Client:
    """A connection to an integrad server.

    target: HOST:PORT, or http://HOST:PORT / https://HOST:PORT as the CLI takes them
    (https:// without `tls` trusts the system's root certificates).
    token: sent as `authorization: Bearer TOKEN` on every call (servers started with
    --auth-token-file or INTEGRAD_AUTH_TOKEN require it).
    tls: None for plaintext; True, PEM root certificate bytes, a path to them, or
    grpc.ChannelCredentials (e.g. grpc.ssl_channel_credentials(ca, key, chain) for mutual TLS).
    timeout: seconds for each call (an Explain's whole stream), None for no deadline.

    Failed calls raise `integrad.Error` with the status code and the server's message.
    """

    def __init__(self, target: str, token: Optional[str] = None, tls: TlsLike = None,
                 *, timeout: Optional[float] = None):
        scheme, _, address = target.rpartition("://")
        if scheme == "https" and tls is None:
            tls = True
        elif scheme not in ("", "http", "https"):
            raise ValueError(f"target {target!r}: use HOST:PORT, http://HOST:PORT or https://HOST:PORT")
        # The server bounds its answers (--max-message-bytes, 64 MiB by default); gRPC's own
        # 4 MiB default would refuse the attributions of a large image model.
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        credentials = _credentials(tls)
        self._channel = (grpc.secure_channel(address, credentials, options) if credentials
                         else grpc.insecure_channel(address, options))
        self._stub = pb_grpc.ExplainerStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request):
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _translate(e) from None

    def _stream(self, method, request) -> Iterator[pb.ExplainEvent]:
        call = method(request, timeout=self.timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise _translate(e) from None
        finally:
            # A caller that stops reading early (or closes the iterator) cancels the call,
            # so the server stops integrating within one batch; after the end it is a no-op.
            call.cancel()

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Waits until the server's gRPC health says SERVING (its models loaded and warmed
        up; it listens before that). Raises TimeoutError with the last status or error."""
        # grpc.health.v1.Health/Check without its generated stubs: the request {service: ""}
        # is empty on the wire, the answer one varint field (1 = SERVING).
        check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda _: b"",
            response_deserializer=lambda data: data[1] if data[:1] == b"\x08" else 0,
        )
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            try:
                status = check(None, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
                if status == 1:
                    return
                last = f"health status {status}"
            except grpc.RpcError as e:
                last = f"{e.code().name}: {e.details()}"
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the server is not SERVING after {timeout} s ({last})")
            time.sleep(0.1)

    def models(self) -> List[ModelInfo]:
        """Every model the server has, those that failed to load included (state 'failed')."""
        listed = self._call(self._stub.ListModels, pb.ListModelsRequest())
        return [ModelInfo.from_proto(m) for m in listed.models]

    def default_model(self) -> str:
        """The model that requests naming none go to ('' if there is none)."""
        return self._call(self._stub.ListModels, pb.ListModelsRequest()).default_model

    def model(self, name: Optional[str] = None) -> ModelInfo:
        """One model's inputs, outputs, labels, ... (default: the default model)."""
        return ModelInfo.from_proto(self._call(self._stub.GetModel, pb.GetModelRequest(model=name or "")))

    def predict(self, image: Optional[ImageLike] = None, *, text: Optional[str] = None,
                pair: Optional[str] = None, features: Optional[Mapping[str, float]] = None,
                tensor=None, inputs: Optional[Mapping[str, InputValue]] = None,
                model: Optional[str] = None, top_k: Optional[int] = None) -> PredictResult:
        """The model's best classes for one input (image: encoded bytes or a file path; text
        and an optional pair; features: a row by feature name; tensor: an array; inputs:
        graph input name -> any of those). top_k: how many classes (server default 5)."""
        request = pb.PredictRequest(
            model=model or "", input=_requests.make_input(image, text, pair, features, tensor),
            inputs=_requests.input_map(inputs), top_k=top_k or 0)
        return PredictResult.from_proto(self._call(self._stub.Predict, request))

    def explain_stream(self, image: Optional[ImageLike] = None, **options) -> Iterator[Event]:
        """Explain, event by event: Progress while it integrates, then one Explanation per
        target. Takes explain's arguments."""
        request = explain_request(image=image, **options)
        for event in self._stream(self._stub.Explain, request):
            yield from _events(event)

    def explain(self, image: Optional[ImageLike] = None, *,
                on_progress: Optional[Callable[[Progress], None]] = None,
                **options) -> Union[Explanation, List[Explanation]]:
        """The attributions of one input (Integrated Gradients, or the request's `technique`):
        the Explanation of its target (by default the top-1 class), or with top_k=k the list
        of the k best classes' Explanations.

        The input and the options are the keywords of `integrad.explain_request` (model,
        image, text, pair, features, tensor, inputs, target, top_k, steps, method, objective,
        baseline, baselines, tolerance, max_steps, batch_size, attribute_to,
        token_normalization, render, technique, blur_ig, guided_ig, xrai, noise_tunnel);
        on_progress is called with each Progress.
        """
        explanations = []
        for event in self.explain_stream(image, **options):
            if isinstance(event, Progress):
                if on_progress is not None:
                    on_progress(event)
            else:
                explanations.append(event)
        return explanations if options.get("top_k") is not None else explanations[0]

    def explain_batch(self, instances: Iterable[Union[str, bytes, Mapping]], *,
                      results_per_event: Optional[int] = None,
                      on_progress: Optional[Callable[[Progress], None]] = None,
                      **options) -> Iterator[Explanation]:
        """Explains many instances with one request's options (explain's, without an input),
        their paths sharing gradient runs. Yields each Explanation as soon as it completes:
        instances may complete out of order, `Explanation.instance` says which it is.

        An instance is a text (str), an encoded image (bytes), or a dict of explain's input
        keywords (image, text, pair, features, tensor, inputs) and optionally a target.
        """
        request = pb.ExplainBatchRequest(
            request=explain_request(**options),
            instances=[_requests.instance(i) for i in instances],
            results_per_event=results_per_event or 0,
        )
        for event in self._stream(self._stub.ExplainBatch, request):
            for item in _events(event):
                if isinstance(item, Explanation):
                    yield item
                elif on_progress is not None:
                    on_progress(item)

    def evaluate(self, image: Optional[ImageLike] = None, *, saliency, **options) -> Evaluation:
        """How faithful a saliency map (an Explanation, or an array) is to the model on this
        image: its deletion, insertion, SIC and AIC curves (docs/evaluate.md). Takes the
        keywords of `integrad.evaluate_request` (model, tensor, inputs, target, objective,
        metrics, reduction, deletion, insertion, pic, batch_size, plot). Image models with a
        softmax head only."""
        request = evaluate_request(image=image, saliency=saliency, **options)
        return Evaluation.from_proto(self._call(self._stub.Evaluate, request))


def _events(event: pb.ExplainEvent) -> Iterator[Event]:
    """An ExplainEvent's Progress or Explanation(s)."""
    kind = event.WhichOneof("event")
    if kind == "progress":
        yield Progress.from_proto(event.progress)
    elif kind == "result":
        yield Explanation.from_proto(event.result)
    elif kind == "results":
        for explanation in event.results.explanations:
            yield Explanation.from_proto(explanation)
