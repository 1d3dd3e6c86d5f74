"""The server a user would otherwise write: diffusers behind FastAPI, one pipeline, a lock (the peer of
`diffrt serve` in bench_serve.py). It answers the OpenAI images route with the same fields the benchmark sends.

    python benchmarks/diffusers_server.py DIFFUSERS_FOLDER PORT
"""

from __future__ import annotations

import base64
import io
import sys
import threading

import torch
import uvicorn
from diffusers import StableDiffusionPipeline
from fastapi import FastAPI
from pydantic import BaseModel


class Generation(BaseModel):
    prompt: str
    size: str = "512x512"
    n: int = 1
    steps: int = 20
    guidance_scale: float = 7.5
    seed: int = 0


def main() -> None:
    folder, port = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(torch.get_num_threads())
    pipe = StableDiffusionPipeline.from_pretrained(
        folder, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/readyz")
    def ready():
        return {"status": "ready"}

    @app.post("/v1/images/generations")
    def generate(body: Generation):  # a plain def: FastAPI runs it in its thread pool; the lock serialises calls
        width, height = (int(v) for v in body.size.split("x"))
        with lock, torch.inference_mode():
            images = pipe(
                body.prompt,
                width=width,
                height=height,
                num_inference_steps=body.steps,
                guidance_scale=body.guidance_scale,
                num_images_per_prompt=body.n,
                generator=torch.Generator().manual_seed(body.seed),
            ).images
        data = []
        for image in images:
            out = io.BytesIO()
            image.save(out, format="PNG")
            data.append({"b64_json": base64.b64encode(out.getvalue()).decode()})
        return {"created": 0, "data": data}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
