"""The models a server holds: one engine package each, loaded once at start, with its pipelines and step batcher.

A served model opens its package once (engines created, graphs optimized) and keeps one pipeline per task and
scheduler, all over the same engines. Each pipeline's ``unet`` is the model's :class:`~.batching.StepBatcher`, so
every request of the model, whatever its task or scheduler, can share a UNet run with the others.

Schedulers are chosen per request by diffrt's (diffusers') class name or by the sampler names of AUTOMATIC1111's web
UI, mapped to the schedulers diffusers documents as their equivalents.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engines import SessionSettings
from ..errors import DiffrtError
from ..package import EnginePackage
from ..pipelines import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image
from ..pipelines.base import DiffusionPipeline
from ..schedulers import SCHEDULERS, Scheduler
from .batching import StepBatcher
from .errors import ServeError, invalid

TASKS = ("txt2img", "img2img", "inpaint")

# AUTOMATIC1111 sampler name -> (diffrt scheduler class, config overrides), after diffusers' scheduler overview.
# "Karras" in the name (or the request's scheduler="karras") turns on Karras sigmas where the scheduler has them.
A1111_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "Euler": ("EulerDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 Karras": ("KDPM2DiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DPM2 a Karras": ("KDPM2AncestralDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {}),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "DPM++ 2M SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True},
    ),
    "DPM++ SDE": ("DPMSolverSinglestepScheduler", {}),
    "DPM++ SDE Karras": ("DPMSolverSinglestepScheduler", {"use_karras_sigmas": True}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "DDIM": ("DDIMScheduler", {}),
    "PLMS": ("PNDMScheduler", {"skip_prk_steps": True}),
    "LCM": ("LCMScheduler", {}),
}
A1111_ALIASES = {
    "Euler a": ["k_euler_a", "k_euler_ancestral"],
    "Euler": ["k_euler"],
    "LMS": ["k_lms"],
    "Heun": ["k_heun"],
    "DPM2": ["k_dpm_2"],
    "DPM2 a": ["k_dpm_2_a"],
    "DPM++ 2M": ["k_dpmpp_2m"],
    "DPM++ 2M Karras": ["k_dpmpp_2m_ka"],
    "DPM++ SDE": ["k_dpmpp_sde"],
    "DDIM": ["ddim"],
    "PLMS": ["plms"],
    "UniPC": ["unipc"],
    "LCM": ["lcm"],
}
# The schedulers a request may name by class: those that drive Stable Diffusion's noise-prediction UNets.
CLASS_SCHEDULERS = tuple(
    name
    for name in sorted(SCHEDULERS)
    if not name.startswith(("CogVideoX", "FlowMatch", "LTX", "DDPMWuerstchen", "ScoreSde", "UnCLIP", "CMStochastic"))
    and not name.endswith("InverseScheduler")
)


def scheduler_choice(field: str, name: str | None, karras: bool = False) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """(class name, overrides) for a request's scheduler: a diffrt class name or an AUTOMATIC1111 sampler name or
    alias; ``karras`` adds Karras sigmas (AUTOMATIC1111's separate ``scheduler="karras"``)."""
    if name is None or name == "":
        return "", (("use_karras_sigmas", True),) if karras else ()
    if name in CLASS_SCHEDULERS:
        cls, overrides = name, {}
    else:
        sampler = next((s for s, aliases in A1111_ALIASES.items() if name in aliases), name)
        if sampler not in A1111_SAMPLERS:
            raise invalid(
                field,
                f"{field}={name!r} is not a scheduler this server runs; accepted: an AUTOMATIC1111 sampler name "
                f"({', '.join(A1111_SAMPLERS)}) or a scheduler class ({', '.join(CLASS_SCHEDULERS)})",
            )
        cls, overrides = A1111_SAMPLERS[sampler]
    if karras:
        overrides = {**overrides, "use_karras_sigmas": True}
    return cls, tuple(sorted(overrides.items()))


@dataclass
class ModelInfo:
    name: str
    path: Path
    sha256: str
    """Of the package's diffrt.json (its provenance: source hashes, LoRAs, export options)."""


class ServedModel:
    """One engine package with its pipelines per (task, scheduler) and the step batcher they share."""

    def __init__(
        self,
        name: str,
        path: str | Path,
        provider: str = "auto",
        session_settings: SessionSettings | None = None,
        step_batching: bool = True,
        max_batch_rows: int | None = None,
    ) -> None:
        self.name = name
        self.path = Path(path)
        provenance = self.path / "diffrt.json"
        digest = hashlib.sha256(provenance.read_bytes() if provenance.is_file() else str(self.path).encode())
        self.info = ModelInfo(name, self.path, digest.hexdigest())
        self.base = AutoPipelineForText2Image.from_pretrained(
            self.path, provider=provider, session_settings=session_settings
        )
        self.base.set_progress_bar_config(disable=True)
        self.package: EnginePackage = self.base.package
        shape_range = self.package.shape_range
        if max_batch_rows is None and shape_range is not None:
            max_batch_rows = 2 * shape_range.batch[2]  # what the engines were built for (guidance doubles)
        raw = self.base.unet
        self.batcher = StepBatcher(raw, max_rows=max_batch_rows) if step_batching else None
        if self.batcher is not None:
            self.base.unet = self.batcher
        self._pipelines: dict[tuple[str, str, tuple], DiffusionPipeline] = {("txt2img", "", ()): self.base}
        self._lock = threading.Lock()

    @property
    def default_size(self) -> tuple[int, int]:
        return self.base.default_size()

    @property
    def limits(self):
        return self.base.limits

    def supports(self, task: str) -> bool:
        needs = {"txt2img": (), "img2img": ("vae_encoder",), "inpaint": ("vae_encoder",)}[task]
        return all(self.package.has(n) for n in needs)

    def pipeline(self, task: str, scheduler: tuple[str, tuple[tuple[str, Any], ...]] = ("", ())) -> Any:
        """The pipeline for ``task`` with the named scheduler (made once, over the model's engines)."""
        key = (task, *scheduler)
        with self._lock:
            pipe = self._pipelines.get(key)
            if pipe is None:
                pipe = self._make(task, scheduler)
                self._pipelines[key] = pipe
        return pipe

    def _make(self, task: str, scheduler: tuple[str, tuple[tuple[str, Any], ...]]) -> Any:
        cls_name, overrides = scheduler
        chosen: Scheduler | None = None
        if cls_name or overrides:
            cls = SCHEDULERS[cls_name] if cls_name else type(self.base.scheduler)
            try:
                chosen = cls.from_config(dict(self.base.scheduler.config), **dict(overrides))
            except DiffrtError as error:
                raise invalid("scheduler", str(error)) from error
        auto = {"txt2img": AutoPipelineForText2Image, "img2img": AutoPipelineForImage2Image}
        auto_cls = auto.get(task, AutoPipelineForInpainting)
        if not self.supports(task):
            raise ServeError(
                422,
                f"model {self.name!r} cannot do {task} (its package has no vae_encoder); accepted: text-to-image "
                "requests for this model",
                "model",
            )
        try:
            pipe = auto_cls.from_pipe(self.base, scheduler=chosen)
        except DiffrtError as error:
            raise ServeError(422, f"model {self.name!r} cannot do {task}: {error}", "model") from error
        pipe.set_progress_bar_config(disable=True)
        pipe.unet = self.base.unet  # the shared step batcher (or the engine itself)
        pipe.stage_hooks = self.base.stage_hooks  # one set of hooks (metrics) for every task
        return pipe

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
