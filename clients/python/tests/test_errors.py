"""Refused calls raise integrad.Error with the server's status code and message."""

from __future__ import annotations

import grpc
import pytest

import integrad

from conftest import PENGUIN


def test_unknown_model_is_not_found(client):
    with pytest.raises(integrad.Error) as raised:
        client.model("no-such-model")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in raised.value.details


def test_errors_in_a_stream_are_raised_too(client):
    with pytest.raises(integrad.Error) as raised:
        client.explain(features=PENGUIN, model="no-such-model")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND


def test_bad_request_is_invalid_argument_naming_the_field(client):
    with pytest.raises(integrad.Error) as raised:
        client.explain(features={"bill_length_mm": 39.1}, model="penguins")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "bill_depth_mm" in raised.value.details
