"""Refused calls raise integrad.Error with the server's status code and message."""

from __future__ import annotations

import grpc
import pytest

import integrad

from conftest import PENGUIN, serve

TOKEN = "s3cret-token"


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


@pytest.fixture(scope="module")
def secured(models_dir, tmp_path_factory):
    with serve(models_dir, tmp_path_factory.mktemp("secured"), env={"INTEGRAD_AUTH_TOKEN": TOKEN}) as address:
        yield address


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_unauthenticated(secured, token):
    with integrad.Client(secured, token=token) as client:
        with pytest.raises(integrad.Error) as raised:
            client.models()
    assert raised.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_right_token_is_let_in(secured):
    with integrad.Client(secured, token=TOKEN) as client:
        assert client.predict(features=PENGUIN, model="penguins").top[0].label == "Adelie"
