"""The server's behaviour over real HTTP (uvicorn on a local port, in this process): the job API and its events,
step batching across requests, cancel (also by disconnect), queue limits, deadlines, keys, limits, bad input,
per-request LoRA adapters and metrics."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import PIL.Image
import pytest
import requests

from diffrt.runtime.pipelines import StableDiffusionPipeline
from diffrt.serve import ServeConfig

PROMPT = "a handwritten digit 5"


def png_array(text: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")).astype(np.int16)


def events(url: str, job: str) -> list[dict]:
    import json

    out, kind = [], None
    with requests.get(f"{url}/v1/jobs/{job}/events", stream=True, timeout=120) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append({"event": kind, **json.loads(line[6:])})
    return out


def alone(package, **call) -> list[np.ndarray]:
    pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    return [np.asarray(im).astype(np.int16) for im in pipe(**call).images]


def test_jobs_report_progress_and_give_the_image_of_the_call_alone(live_server, digits_package):
    srv = live_server({"digits": digits_package})
    body = {
        "prompt": PROMPT,
        "width": 32,
        "height": 32,
        "steps": 6,
        "guidance_scale": 4,
        "seed": 11,
        "n": 2,
        "preview_every": 2,
        "scheduler": "DPM++ 2M Karras",
    }
    created = requests.post(f"{srv.url}/v1/jobs", json=body)
    assert created.status_code == 202 and created.headers["location"] == f"/v1/jobs/{created.json()['id']}"
    stream = events(srv.url, created.json()["id"])
    kinds = [e["event"] for e in stream]
    assert kinds[-1] == "done" and "started" in kinds
    steps = [e for e in stream if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 7)) and {e["total"] for e in steps} == {6}
    assert [("preview_png" in e) for e in steps] == [False, True, False, True, False, True]
    assert steps[-1]["eta_s"] == 0 and all(e["eta_s"] >= 0 for e in steps)
    job = requests.get(f"{srv.url}/v1/jobs/{created.json()['id']}").json()
    assert job["state"] == "done" and job["seed"] == 11 and len(job["images"]) == 2
    from diffrt.runtime.schedulers import DPMSolverMultistepScheduler

    pipe = StableDiffusionPipeline.from_pretrained(digits_package, provider="cpu")
    pipe.set_progress_bar_config(disable=True)
    karras = DPMSolverMultistepScheduler.from_config(dict(pipe.scheduler.config), use_karras_sigmas=True)
    pipe = StableDiffusionPipeline.from_pipe(pipe, karras)
    want = pipe(
        PROMPT, height=32, width=32, num_inference_steps=6, guidance_scale=4, generator=11, num_images_per_prompt=2
    ).images
    for got, image in zip(job["images"], want):
        assert np.array_equal(png_array(got), np.asarray(image).astype(np.int16))


def test_concurrent_requests_share_unet_steps_and_match_requests_alone(live_server, digits_package):
    srv = live_server({"digits": digits_package}, ServeConfig(max_batch=4))
    bodies = [
        {"prompt": "a handwritten digit 1", "size": "32x32", "steps": 12, "guidance_scale": 4, "seed": 1},
        {"prompt": "a handwritten seven", "size": "32x32", "steps": 8, "guidance_scale": 1.0, "seed": 2, "n": 2},
        {
            "prompt": "a handwritten digit 3",
            "size": "32x32",
            "steps": 10,
            "guidance_scale": 6,
            "seed": 3,
            "scheduler": "Euler a",
        },
        {
            "prompt": "a handwritten digit 8",
            "size": "32x32",
            "steps": 12,
            "guidance_scale": 3,
            "seed": 4,
            "negative_prompt": "a handwritten digit 0",
        },
    ]

    def post(body):
        answer = requests.post(f"{srv.url}/v1/images/generations", json=body, timeout=120)
        assert answer.status_code == 200, answer.text
        return [png_array(item["b64_json"]) for item in answer.json()["data"]]

    separately = [post(body) for body in bodies]
    srv.slow_down("digits", 0.03)  # each step long enough for all four to meet at the UNet
    barrier = threading.Barrier(len(bodies))

    def together_one(body):
        barrier.wait()
        return post(body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(together_one, bodies))
    for body, want, got in zip(bodies, separately, together):
        assert len(got) == len(want)
        for a, b in zip(want, got):
            assert np.abs(a - b).max() <= 1, body  # float results within 1e-5: at most one level of 255 apart
    metrics = requests.get(f"{srv.url}/metrics").text
    shared = [line for line in metrics.splitlines() if line.startswith("diffrt_unet_batch_requests_bucket")]
    one = next(float(line.split()[-1]) for line in shared if 'le="1.0"' in line)
    total = next(float(line.split()[-1]) for line in shared if 'le="+Inf"' in line)
    print(f"UNet runs: {total:.0f}, of them alone: {one:.0f}")
    assert total > one  # some runs served several requests


def test_delete_cancels_a_running_job_at_the_next_step(live_server, digits_package):
    srv = live_server({"digits": digits_package}, ServeConfig(max_batch=1))
    srv.slow_down("digits", 0.02)
    job = requests.post(f"{srv.url}/v1/jobs", json={"prompt": PROMPT, "size": "32x32", "steps": 150}).json()["id"]
    queued = requests.post(f"{srv.url}/v1/jobs", json={"prompt": PROMPT, "size": "32x32", "steps": 150}).json()["id"]
    while requests.get(f"{srv.url}/v1/jobs/{job}").json()["step"] < 3:
        time.sleep(0.01)
    assert requests.get(f"{srv.url}/v1/jobs/{queued}").json()["position"] == 1
    assert requests.delete(f"{srv.url}/v1/jobs/{queued}").json()["state"] == "cancelled"
    gone = requests.delete(f"{srv.url}/v1/jobs/{job}").json()
    assert gone["state"] == "cancelled" and 3 <= gone["step"] < 150
    assert gone["error"]["code"] == 499
    assert events(srv.url, job)[-1]["event"] == "cancelled"
    after = requests.post(f"{srv.url}/v1/images/generations", json={"prompt": PROMPT, "size": "32x32", "steps": 2})
    assert after.status_code == 200  # the worker goes on
    assert requests.get(f"{srv.url}/v1/jobs/unknown").status_code == 404


def test_a_client_that_disconnects_cancels_its_job(live_server, digits_package):
    srv = live_server({"digits": digits_package}, ServeConfig(max_batch=1))
    srv.slow_down("digits", 0.02)
    body = b'{"prompt": "a handwritten digit 2", "size": "32x32", "steps": 150}'
    with socket.create_connection(("127.0.0.1", srv.port)) as conn:
        conn.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        deadline = time.monotonic() + 30
        while not any(job.step >= 2 for job in srv.server.jobs.values()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
    (job,) = srv.server.jobs.values()
    assert job.wait(30)
    assert job.state == "cancelled" and job.step < 150 and "disconnected" in job.error.message


def test_a_full_queue_answers_429_with_retry_after(live_server, digits_package):
    srv = live_server({"digits": digits_package}, ServeConfig(max_batch=1, max_queue=2))
    srv.slow_down("digits", 0.02)
    body = {"prompt": PROMPT, "size": "32x32", "steps": 100}
    running = requests.post(f"{srv.url}/v1/jobs", json=body)
    while requests.get(f"{srv.url}/v1/jobs/{running.json()['id']}").json()["state"] != "running":
        time.sleep(0.01)
    waiting = [requests.post(f"{srv.url}/v1/jobs", json=body) for _ in range(2)]
    accepted = [running, *waiting]
    assert [a.status_code for a in accepted] == [202, 202, 202]  # one running, two waiting
    refused = requests.post(f"{srv.url}/v1/jobs", json=body)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "full" in refused.json()["error"]["message"]
    sync = requests.post(f"{srv.url}/v1/images/generations", json=body)
    assert sync.status_code == 429
    for job in accepted:
        requests.delete(f"{srv.url}/v1/jobs/{job.json()['id']}")


def test_a_request_past_its_deadline_gets_504(live_server, digits_package):
    srv = live_server({"digits": digits_package}, ServeConfig(request_timeout_s=30))
    srv.slow_down("digits", 0.02)
    answer = requests.post(
        f"{srv.url}/v1/images/generations", json={"prompt": PROMPT, "size": "32x32", "steps": 150, "timeout_s": 0.3}
    )
    assert answer.status_code == 504 and "deadline" in answer.json()["error"]["message"]
    (job,) = srv.server.jobs.values()
    assert job.state == "failed" and job.step < 150
    assert job.spec.timeout_s == 0.3  # the request's own, below the server's 30 s


def test_api_keys(live_server, digits_package):
    import openai
    import webuiapi

    srv = live_server({"digits": digits_package}, ServeConfig(api_keys=("first-key", "second-key")))
    body = {"prompt": PROMPT, "size": "32x32", "steps": 2}
    url = f"{srv.url}/v1/images/generations"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-key"}, {"Authorization": "Bearer"}):
        answer = requests.post(url, json=body, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["param"] == "authorization"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert requests.post(url, json=body, headers={"Authorization": "Bearer second-key"}).status_code == 200
    assert requests.get(f"{srv.url}/healthz").status_code == 200  # probes need no key
    assert requests.get(f"{srv.url}/readyz").status_code == 200
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="first-key", max_retries=0)
    assert len(client.images.generate(prompt=PROMPT, size="32x32", extra_body={"steps": 2}).data) == 1
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0).models.list()
    api = webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, username="anyone", password="second-key")
    assert len(api.txt2img(prompt=PROMPT, width=32, height=32, steps=2).images) == 1
    with pytest.raises(RuntimeError) as error:
        webuiapi.WebUIApi(host="127.0.0.1", port=srv.port, username="x", password="bad").txt2img(prompt=PROMPT)
    assert error.value.args[0] == 401


def big_png(width: int, height: int) -> bytes:
    """A valid PNG of width x height black 1-bit pixels: a few kilobytes that would decode to a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def b64png(image: PIL.Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_limits_and_bad_requests_get_4xx_naming_the_field(live_server, digits_package):
    config = ServeConfig(
        max_side=64, max_pixels=48 * 48, max_steps=50, max_n=4, max_body_bytes=200_000, max_image_pixels=64 * 64
    )
    srv = live_server({"digits": digits_package}, config)
    gen, jobs, a1111 = f"{srv.url}/v1/images/generations", f"{srv.url}/v1/jobs", f"{srv.url}/sdapi/v1/img2img"
    ok = {"prompt": PROMPT, "size": "32x32", "steps": 2}
    bomb = base64.b64encode(big_png(20000, 20000)).decode()
    assert len(bomb) < 200_000
    cases = [
        (gen, {**ok, "size": "72x32"}, 422, "size"),
        (gen, {**ok, "size": "36x32"}, 422, "size"),
        (gen, {**ok, "size": "56x56"}, 422, "size"),  # 3136 pixels > 48 x 48
        (gen, {**ok, "size": "big"}, 422, "size"),
        (gen, {**ok, "steps": 51}, 422, "steps"),
        (gen, {**ok, "steps": "ten"}, 422, "steps"),
        (gen, {**ok, "n": 5}, 422, "n"),
        (gen, {**ok, "n": 0}, 422, "n"),
        (gen, {**ok, "guidance_scale": -1}, 422, "guidance_scale"),
        (gen, {"size": "32x32"}, 422, "prompt"),
        (gen, {**ok, "prompt": 5}, 422, "prompt"),
        (gen, {**ok, "colour": "red"}, 422, "colour"),
        (gen, {**ok, "scheduler": "Best Sampler"}, 422, "scheduler"),
        (gen, {**ok, "adapters": {"bold": 1.0}}, 422, "adapters"),  # this package has no LoRA slots
        (gen, {**ok, "adapters": [1]}, 422, "adapters"),
        (gen, {**ok, "model": "other"}, 404, "model"),
        (gen, {**ok, "response_format": "url"}, 422, "response_format"),
        (gen, {**ok, "seed": -5}, 422, "seed"),
        (jobs, {**ok, "image": "not base64!"}, 422, "image"),
        (jobs, {**ok, "image": base64.b64encode(b"plain text").decode()}, 422, "image"),
        (jobs, {**ok, "image": b64png(PIL.Image.new("RGB", (32, 32)))[:60]}, 422, "image"),  # truncated
        (jobs, {**ok, "image": b64png(PIL.Image.new("RGB", (80, 80)))}, 422, "image"),  # > 64 x 64 pixels
        (jobs, {**ok, "image": bomb}, 422, "image"),
        (jobs, {**ok, "mask": b64png(PIL.Image.new("L", (32, 32)))}, 422, "mask"),
        (jobs, {**ok, "strength": 2}, 422, "strength"),
        (jobs, {**ok, "timeout_s": 0}, 422, "timeout_s"),
        (a1111, {"prompt": PROMPT, "init_images": [], "width": 32, "height": 32}, 422, "init_images"),
        (
            a1111,
            {"prompt": PROMPT, "init_images": ["data:image/png;base64,@@"], "width": 32, "height": 32},
            422,
            "init_images[0]",
        ),
        (a1111, {"prompt": PROMPT, "init_images": [bomb], "width": 32, "height": 32}, 422, "init_images[0]"),
        (f"{srv.url}/sdapi/v1/txt2img", {"prompt": PROMPT, "width": 32, "height": 32, "n_iter": 2}, 422, "n_iter"),
        (
            f"{srv.url}/sdapi/v1/txt2img",
            {"prompt": PROMPT, "width": 32, "height": 32, "sampler_name": "DPM fast"},
            422,
            "sampler_name",
        ),
        (
            f"{srv.url}/sdapi/v1/txt2img",
            {"prompt": PROMPT, "width": 32, "height": 32, "override_settings": {"CLIP_stop_at_last_layers": 2}},
            422,
            "override_settings.CLIP_stop_at_last_layers",
        ),
        (f"{srv.url}/sdapi/v1/options", {"sd_model_checkpoint": "nope"}, 404, "model"),
    ]
    for url, body, status, field in cases:
        answer = requests.post(url, json=body)
        assert answer.status_code == status, (body, answer.text)
        error = answer.json()["error"]
        assert error["param"] == field, (body, error)
        assert error["message"] and answer.json()["detail"] == error["message"]
    raw = [
        (gen, b"{not json", 400, "body"),
        (gen, b'{"prompt": "x", "size": "32x32", "guidance_scale": NaN}', 422, "guidance_scale"),
        (gen, b"[1, 2]", 400, "body"),
        (gen, b"\xff\xfe", 400, "body"),
        (gen, b"{" + b" " * 300_000 + b"}", 413, "body"),  # with a Content-Length
    ]
    for url, data, status, field in raw:
        answer = requests.post(url, data=data, headers={"Content-Type": "application/json"})
        assert (answer.status_code, answer.json()["error"]["param"]) == (status, field), data[:20]
    chunked = requests.post(gen, data=iter([b"{", b" " * 150_000, b" " * 150_000, b"}"]))  # no Content-Length
    assert chunked.status_code == 413
    edits = requests.post(f"{srv.url}/v1/images/edits", data={"prompt": PROMPT}, files={"image": ("a.png", b"junk")})
    assert edits.status_code == 422 and edits.json()["error"]["param"] == "image"
    assert requests.get(f"{srv.url}/v1/nothing").status_code == 404
    assert requests.post(f"{srv.url}/sdapi/v1/progress").status_code == 405
    # Nothing above reached a worker or broke one: a good request still works.
    assert requests.post(gen, json=ok).status_code == 200
    metrics = requests.get(f"{srv.url}/metrics").text
    assert 'status="500"' not in metrics


def test_per_request_adapters(live_server, tmp_path):
    from serve_helpers import MODEL

    from diffrt.export.package import ExportOptions, export_package
    from diffrt.export.source import load_source

    package = tmp_path / "slotted"
    export_package(load_source(MODEL), package, ExportOptions(batch=10, check=False, lora_slots=16))
    lora = MODEL / "bold_lora.safetensors"
    srv = live_server({"digits": package}, ServeConfig(loras={"digits": {"bold": lora}}))
    body = {"prompt": "a handwritten digit 0", "size": "32x32", "steps": 20, "guidance_scale": 4, "seed": 5, "n": 4}
    plain = requests.post(f"{srv.url}/v1/images/generations", json=body).json()["data"]
    bold = requests.post(f"{srv.url}/v1/images/generations", json={**body, "adapters": {"bold": 1.0}}).json()["data"]
    pipe = StableDiffusionPipeline.from_pretrained(package, provider="cpu")
    pipe.load_lora_weights(str(lora), adapter_name="bold")
    pipe.set_progress_bar_config(disable=True)
    call = dict(height=32, width=32, num_inference_steps=20, guidance_scale=4, generator=5, num_images_per_prompt=4)
    want = pipe("a handwritten digit 0", adapters={"bold": 1.0}, **call).images
    for got, image in zip(bold, want):
        assert np.array_equal(png_array(got["b64_json"]), np.asarray(image).astype(np.int16))
    ink = [np.mean([255 - png_array(item["b64_json"]).mean() for item in data]) for data in (plain, bold)]
    assert ink[1] > 1.1 * ink[0]
    unknown = requests.post(f"{srv.url}/v1/images/generations", json={**body, "adapters": {"thin": 1.0}})
    assert unknown.status_code == 422 and "thin" in unknown.json()["error"]["message"]


def test_metrics_readiness_and_access_log(live_server, digits_package, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO, logger="diffrt.serve.access")
    srv = live_server({"digits": digits_package})
    ready = requests.get(f"{srv.url}/readyz").json()
    assert ready["status"] == "ready" and ready["models"] == ["digits"] and ready["instance"] == srv.server.instance
    requests.post(f"{srv.url}/v1/images/generations", json={"prompt": PROMPT, "size": "32x32", "steps": 3, "n": 2})
    requests.post(f"{srv.url}/v1/images/generations", json={"prompt": PROMPT, "size": "31x32"})
    text = requests.get(f"{srv.url}/metrics").text
    for line in (
        'diffrt_http_requests_total{method="POST",route="/v1/images/generations",status="200"} 1.0',
        'diffrt_http_requests_total{method="POST",route="/v1/images/generations",status="422"} 1.0',
        'diffrt_images_generated_total{model="digits"} 2.0',
        'diffrt_queue_depth{model="digits"} 0.0',
        'diffrt_jobs_in_flight{model="digits"} 0.0',
        'diffrt_unet_batch_requests_count{model="digits"} 3.0',
        'diffrt_stage_seconds_count{model="digits",stage="unet"} 3.0',
        'diffrt_stage_seconds_count{model="digits",stage="vae_decoder"} 1.0',
        'diffrt_job_seconds_count{model="digits",state="done"} 1.0',
        'diffrt_errors_total{kind="http_422"} 1.0',
    ):
        assert line in text, line
    access = [json.loads(r.getMessage()) for r in caplog.records if r.name == "diffrt.serve.access"]
    posts = [a for a in access if a["method"] == "POST"]
    assert [(a["route"], a["status"]) for a in posts] == [
        ("/v1/images/generations", 200),
        ("/v1/images/generations", 422),
    ]
    assert all(a["seconds"] >= 0 and a["client"] == "127.0.0.1" for a in posts)
