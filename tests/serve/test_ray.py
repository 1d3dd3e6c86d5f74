"""The server on Ray Serve, on a local Ray cluster this test starts: two replicas both serve; a replica killed while
requests run loses none silently (each gets an image or an error that says what happened) and Ray brings it back."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from serve_helpers import MODEL, free_port

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local cluster
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no machine here reaches the internet
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def replicas():
    from ray import serve

    return serve.status().applications["default"].deployments["diffrt"].replica_states


def test_two_replicas_serve_and_a_killed_one_loses_no_request_silently(ray_cluster, digits_package):
    from ray import serve

    from diffrt.serve import ServeConfig
    from diffrt.serve.ray import deployment

    app = deployment(
        {"digits": str(digits_package)}, ServeConfig(max_batch=2), num_replicas=2, ray_actor_options={"num_cpus": 1}
    )
    serve.run(app.bind(), route_prefix="/")
    url = ray_cluster
    assert replicas() == {"RUNNING": 2}

    def instance(_):
        answer = requests.get(f"{url}/readyz")
        assert answer.status_code == 200
        return answer.json()["instance"]

    with ThreadPoolExecutor(4) as pool:  # concurrent probes spread over the replicas
        seen = set(pool.map(instance, range(40)))
    for _ in range(3):
        answer = requests.post(f"{url}/v1/images/generations", json={"prompt": "a digit", "size": "32x32", "steps": 2})
        assert answer.status_code == 200
    assert len(seen) == 2, "only one replica answered"

    body = {"prompt": "a handwritten digit 6", "size": "32x32", "steps": 150, "n": 4}
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client(k: int):
        for j in range(3):  # each request its own digit, seed and step count
            ask = {**body, "prompt": f"a handwritten digit {k}", "seed": 10 * k + j, "steps": 100 + 10 * j}
            try:
                answer = requests.post(f"{url}/v1/images/generations", json=ask, timeout=120)
                outcome = (answer.status_code, answer.text)
            except requests.RequestException as error:  # a dropped connection is an error the client sees
                outcome = (0, repr(error))
            with lock:
                results.append(outcome)

    clients = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for thread in clients:
        thread.start()
    time.sleep(1.0)
    victim = next(a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"])
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    for thread in clients:
        thread.join(timeout=300)
    assert len(results) == 18
    outcomes = Counter(status for status, _ in results)
    print(f"outcomes with one replica killed: {dict(outcomes)}")
    for status, text in results:
        if status == 200:
            assert len(requests.models.complexjson.loads(text)["data"]) == 4
        else:  # not silent: an error status or a dropped connection, with a message
            assert status != 200 and text
    assert outcomes[200] >= 1

    deadline = time.monotonic() + 120
    while replicas() != {"RUNNING": 2}:
        assert time.monotonic() < deadline, f"Ray did not bring the replica back: {replicas()}"
        time.sleep(0.5)
    answer = requests.post(f"{url}/v1/images/generations", json={**body, "steps": 2})
    assert answer.status_code == 200


def test_the_repository_serve_config_builds_an_application(digits_package):
    import yaml

    from diffrt.serve.ray import build_app

    config = yaml.safe_load((MODEL.parents[1] / "serve_config.yaml").read_text())
    (application,) = config["applications"]
    assert application["import_path"] == "diffrt.serve.ray:build_app"
    args = dict(application["args"])
    args["models"] = {"digits": str(digits_package)}
    built = build_app(args)
    assert type(built).__name__ == "Application"
    with pytest.raises(ValueError, match="unknown args"):
        build_app({**args, "max_bach": 4})
    with pytest.raises(ValueError, match="models"):
        build_app({"max_batch": 4})
