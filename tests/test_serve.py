"""``dht serve``: answers equal ``Classifier.predict``'s, concurrent requests share batches, and malformed
requests get a 4xx with a message while the server keeps serving."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from dht.classifier import Classifier
from dht.serve import Limits, create_app
from dht.training.config import RunConfig, TrainConfig
from dht.training.loop import train

TEXTS = [f"text number {i} " + "word " * (i % 17) for i in range(40)]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "dht"
    train(RunConfig(method="dht", backbone="tiny", options={"config": "f-dht"},
                    train=TrainConfig(epochs=1, batch_size=16, max_train=96, max_test=16, eval_batch_size=16)),
          folder, progress=False)
    return Classifier.load(folder)


def test_concurrent_requests_are_batched_and_answered_as_predict_answers(classifier):
    expected = [row.to_dict() for row in classifier.predict(TEXTS)]
    with TestClient(create_app(classifier, Limits(max_wait_ms=50))) as client:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: client.post("/predict", json={"texts": TEXTS[i:i + 2]}),
                                    range(0, len(TEXTS), 2)))
        assert all(answer.status_code == 200 for answer in answers)
        got = [row for answer in answers for row in answer.json()["predictions"]]
        assert [row["label"] for row in got] == [row["label"] for row in expected]
        assert [row["route"] for row in got] == [row["route"] for row in expected]
        for row, want in zip(got, expected):
            assert row["probabilities"] == pytest.approx(want["probabilities"], abs=1e-4)
        batches = client.get("/info").json()["batches"]
        assert batches < len(answers)  # requests that arrived together were predicted together


@pytest.mark.parametrize("body, status, message", [
    ('{"texts": ["a", ', 422, "body: Invalid JSON"),
    ('{"texts": []}', 422, "texts is empty"),
    ('{"texts": ["a", 7]}', 422, "texts.1: Input should be a valid string"),
    ('{"texts": "a"}', 422, "texts: Input should be a valid array"),
    ('{"text": ["a"]}', 422, 'texts: Field required (send {\\"texts\\"'),
    ('["a"]', 422, "body: Input should be an object"),
    ('{"texts": ["a", "b", "c", "d"]}', 413, "4 texts: at most 3 per request"),
    ('{"texts": ["' + "x" * 101 + '"]}', 413, "texts[0] has 101 characters: at most 100"),
    ('{"texts": ["' + "x" * 2000 + '"]}', 413, "request body over 1000 bytes"),
])
def test_malformed_requests_get_a_4xx_and_the_server_keeps_serving(classifier, body, status, message):
    limits = Limits(max_texts=3, max_chars=100, max_body_bytes=1000)
    with TestClient(create_app(classifier, limits)) as client:
        answer = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == status and message in answer.text, answer.text
        assert client.get("/health").json() == {"status": "ok"}
        ok = client.post("/predict", json={"texts": ["still here"]})
        assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] in classifier.classes


def test_a_json_body_is_read_whatever_its_content_type(classifier):
    """curl -d sends application/x-www-form-urlencoded; the body is JSON all the same."""
    with TestClient(create_app(classifier)) as client:
        for headers in ({"content-type": "application/x-www-form-urlencoded"}, {}):
            answer = client.post("/predict", content='{"texts": ["rain"]}', headers=headers)
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["label"] == classifier.predict(["rain"])[0].label
        assert "texts" in str(client.get("/openapi.json").json()["paths"]["/predict"])  # the schema is still shown


def test_info_names_the_run_and_its_figures(classifier):
    with TestClient(create_app(classifier)) as client:
        info = client.get("/info").json()
    assert info["method"] == "dht" and info["classes"] == list(classifier.classes)
    assert 0 < info["test"]["flop_ratio"] <= 1 and info["limits"]["max_texts"] == 256


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="--max-texts must be > 0"):
        Limits(max_texts=0)


def test_a_batch_never_exceeds_its_text_limit_and_a_body_needs_a_length(classifier):
    limits = Limits(max_wait_ms=200, max_batch_texts=3)
    with TestClient(create_app(classifier, limits)) as client:
        with ThreadPoolExecutor(6) as pool:  # 6 requests of 2 texts: at most one request per batch
            answers = list(pool.map(lambda i: client.post("/predict", json={"texts": TEXTS[i:i + 2]}),
                                    range(0, 12, 2)))
        assert all(answer.status_code == 200 for answer in answers)
        assert [row["label"] for a in answers for row in a.json()["predictions"]] == \
            [row.label for row in classifier.predict(TEXTS[:12])]
        assert client.get("/info").json()["batches"] == 6
        chunked = client.post("/predict", content=iter([b'{"texts": ["a"]}']),
                              headers={"content-type": "application/json"})
        assert chunked.status_code == 411 and "Content-Length" in chunked.text
