"""`diffrt serve` as users run it (a subprocess on a local port), driven by the clients they use: the official
`openai` client and the `webuiapi` AUTOMATIC1111 client. The digits they get back are judged by the classifier
of the demo model's test; SIGTERM stops the server gracefully."""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import PIL.Image
import pytest
import requests
from fixtures.digits import WORDS, to_sklearn, train_classifier
from serve_helpers import free_port

STEPS, GUIDANCE = 20, 4.0


def start_cli(package, log, *args: str) -> tuple[subprocess.Popen, str]:
    """`diffrt serve PACKAGE=digits ARGS` on a free port, its output to the file ``log``; once /readyz says ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "diffrt", "serve", f"{package}=digits", "--port", str(port), "--provider", "cpu"]
    with open(log, "w") as out:
        process = subprocess.Popen([*cmd, *args], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert process.poll() is None, open(log).read()
        try:
            if requests.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or too busy loading to answer
            pass
        assert time.monotonic() < deadline, "diffrt serve did not become ready"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def served(digits_package, tmp_path_factory):
    process, url = start_cli(digits_package, tmp_path_factory.mktemp("log") / "serve.log", "--max-batch", "4")
    yield url
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


@pytest.fixture(scope="module")
def judge():
    model, held_out = train_classifier()
    assert held_out >= 0.95
    return model


def recognised(judge, images: list[PIL.Image.Image], digits: list[int]) -> float:
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images])
    return float((judge.predict(to_sklearn(arrays)) == np.array(digits)).mean())


def test_openai_client_gets_the_digits_it_asked_for(served, judge):
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["digits"]
    images, digits = [], []

    def ask(d: int) -> list[PIL.Image.Image]:
        prompt = f"a handwritten digit {d}" if d % 2 else f"a handwritten {WORDS[d]}"
        result = client.images.generate(
            model="digits",
            prompt=prompt,
            n=2,
            size="32x32",
            response_format="b64_json",
            extra_body={"steps": STEPS, "guidance_scale": GUIDANCE, "seed": d},
        )
        return [PIL.Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]

    threads_results: dict[int, list] = {}
    threads = [threading.Thread(target=lambda d=d: threads_results.__setitem__(d, ask(d))) for d in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in range(10):
        assert [im.size for im in threads_results[d]] == [(32, 32)] * 2
        images += threads_results[d]
        digits += [d, d]
    accuracy = recognised(judge, images, digits)
    print(f"openai client: {accuracy:.0%} of 20 digits recognised")
    assert accuracy >= 0.8


def test_openai_client_edits_and_errors(served):
    import openai

    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    white = io.BytesIO()
    PIL.Image.new("RGB", (32, 32), "white").save(white, "PNG")
    mask = io.BytesIO()  # OpenAI masks: transparent where the image is edited (here, the left half)
    rgba = PIL.Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 16, 32))
    rgba.save(mask, "PNG")
    result = client.images.edit(
        model="digits",
        image=("in.png", white.getvalue(), "image/png"),
        prompt="a handwritten digit 1",
        size="32x32",
        extra_body={"steps": 10, "seed": 1, "strength": 0.9},
    )
    assert len(result.data) == 1
    inpainted = client.images.edit(
        model="digits",
        image=("in.png", white.getvalue(), "image/png"),
        mask=("mask.png", mask.getvalue(), "image/png"),
        prompt="a handwritten digit 1",
        size="32x32",
        extra_body={"steps": 10, "seed": 1},
    )
    pixels = np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(inpainted.data[0].b64_json))).convert("L"))
    # The kept (opaque) half stays near the white input (it is re-imposed in latent space, as diffusers does).
    assert pixels[:, 24:].mean() >= 220 and pixels[:, :16].mean() < pixels[:, 24:].mean()
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.images.generate(model="digits", prompt="x", size="30x32")
    assert error.value.body["param"] == "size"
    with pytest.raises(openai.NotFoundError):
        client.images.generate(model="nope", prompt="x")
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.images.generate(model="digits", prompt="x", response_format="url")
    assert error.value.body["param"] == "response_format"


def test_webuiapi_client_gets_the_digits_it_asked_for(served, judge):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=int(served.rsplit(":", 1)[1]), sampler="DPM++ 2M", steps=STEPS)
    names = [s["name"] for s in api.get_samplers()]
    assert {"Euler a", "DPM++ 2M Karras", "DDIM"} <= set(names)
    assert [m["title"] for m in api.get_sd_models()] == ["digits"]
    api.util_set_model("digits")
    assert api.util_get_current_model() == "digits"
    images, digits = [], []
    for d in range(10):
        result = api.txt2img(
            prompt=f"a handwritten digit {d}", width=32, height=32, cfg_scale=GUIDANCE, seed=d, batch_size=2
        )
        assert result.info["seed"] == d and len(result.images) == 2
        images += result.images
        digits += [d, d]
    accuracy = recognised(judge, images, digits)
    print(f"webuiapi client: {accuracy:.0%} of 20 digits recognised")
    assert accuracy >= 0.8
    # Karras sigmas, img2img from a drawn digit, and inpainting keep working through the same client.
    karras = api.txt2img(
        prompt="a handwritten digit 4", width=32, height=32, cfg_scale=GUIDANCE, seed=1, sampler_name="DPM++ 2M Karras"
    )
    redrawn = api.img2img(
        images=[karras.image],
        prompt="a handwritten digit 4",
        width=32,
        height=32,
        seed=2,
        denoising_strength=0.5,
        cfg_scale=GUIDANCE,
    )
    assert recognised(judge, [karras.image, redrawn.image], [4, 4]) == 1.0
    mask = PIL.Image.new("L", (32, 32), 0)
    mask.paste(255, (0, 0, 32, 16))
    inpainted = api.img2img(
        images=[PIL.Image.new("RGB", (32, 32), "white")],
        mask_image=mask,
        mask_blur=0,
        prompt="a handwritten digit 7",
        width=32,
        height=32,
        denoising_strength=1.0,
        seed=3,
    )
    kept = np.asarray(inpainted.image.convert("L"))
    assert kept[24:].mean() >= 220 and kept[:16].mean() < kept[24:].mean()  # the unmasked bottom half is kept
    with pytest.raises(RuntimeError) as error:
        api.txt2img(prompt="x", width=32, height=32, restore_faces=True)
    assert error.value.args[0] == 422 and "restore_faces" in error.value.args[1]


def test_progress_and_interrupt_through_webuiapi(served):
    import webuiapi

    api = webuiapi.WebUIApi(host="127.0.0.1", port=int(served.rsplit(":", 1)[1]), steps=150)
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.setdefault(
            "r",
            api.txt2img(prompt="a handwritten digit 9", width=32, height=32, batch_size=8, seed=9, sampler_name="Heun"),
        )
    )
    worker.start()
    seen = None
    deadline = time.monotonic() + 30
    while seen is None and time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] > 0:
            seen = progress
        time.sleep(0.01)
    assert seen is not None, "no progress was reported"
    assert 0 < seen["progress"] < 1 and seen["state"]["sampling_steps"] == 299  # Heun: 2 evaluations a step, less 1
    assert seen["current_image"] is not None  # a preview of the latents so far
    PIL.Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).load()
    api.interrupt()
    worker.join(timeout=60)
    info = result["r"].info
    assert info["interrupted"] is True and len(result["r"].images) == 8  # the images so far, as the web UI returns


def test_sigterm_finishes_running_jobs_and_exits_zero(digits_package, tmp_path):
    process, url = start_cli(digits_package, tmp_path / "log", "--max-batch", "1", "--shutdown-timeout", "60")
    body = {"prompt": "a handwritten digit 3", "size": "32x32", "n": 8, "steps": 150, "seed": 1}
    answers: list = []
    client = threading.Thread(target=lambda: answers.append(requests.post(f"{url}/v1/images/generations", json=body)))
    client.start()
    deadline = time.monotonic() + 60
    while requests.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:  # the job is running
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    client.join(timeout=120)
    assert process.wait(timeout=120) == 0
    assert answers[0].status_code == 200 and len(answers[0].json()["data"]) == 8


def test_sigterm_past_the_deadline_cancels_jobs_and_exits_zero(digits_package, tmp_path):
    process, url = start_cli(digits_package, tmp_path / "log", "--max-batch", "1", "--shutdown-timeout", "0.5")
    body = {"prompt": "a handwritten digit 3", "width": 32, "height": 32, "n": 8, "steps": 150}
    jobs = [requests.post(f"{url}/v1/jobs", json=body).json()["id"] for _ in range(6)]
    streams = [requests.get(f"{url}/v1/jobs/{job}/events", stream=True, timeout=120) for job in jobs]
    time.sleep(0.2)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    finals = []
    for stream in streams:
        events = [line for line in stream.iter_lines(decode_unicode=True) if line.startswith("event: ")]
        finals.append(events[-1].split(": ")[1])
    assert process.wait(timeout=60) == 0
    print(f"exited in {time.monotonic() - started:.1f} s; job ends: {finals}")
    assert finals[-1] == "cancelled" and set(finals) <= {"done", "cancelled"}
    assert time.monotonic() - started < 30
    with pytest.raises(requests.ConnectionError):  # nothing listens any more
        requests.get(f"{url}/healthz", timeout=2)
