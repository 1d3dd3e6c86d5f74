"""The server on Ray Serve (``pip install diffrt[ray]``): the same ASGI app in every replica, Ray's proxy in front.

Each replica loads its models once (the deployment is healthy only when they are loaded) and runs its own queues
and step batcher; Ray Serve spreads requests over replicas, restarts a replica that dies, and adds or removes
replicas on the number of ongoing requests. ``serve run serve_config.yaml`` starts it from the repository's config
file (:func:`build_app`), or from Python::

    from ray import serve
    from diffrt.serve.ray import deployment
    serve.run(deployment({"digits": "engines/default"}, num_replicas=2).bind())

On a cluster of several machines (``ray start --head`` on one, ``ray start --address=HEAD:6379`` on the others, or a
KubeRay ``RayService`` whose ``serveConfigV2`` is the same config file) the replicas land on any node that has the
CPUs / GPUs a replica asks for; every node needs the engine packages at the same path (a shared volume, or the
package baked into the image).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any

from ray import serve

from .server import ServeConfig


def deployment(
    models: Mapping[str, str],
    config: ServeConfig | None = None,
    *,
    name: str = "diffrt",
    num_replicas: int | str | None = None,
    ray_actor_options: Mapping[str, Any] | None = None,
    autoscaling_config: Mapping[str, Any] | None = None,
    max_ongoing_requests: int | None = None,
    health_check_period_s: float = 2.0,
):
    """A Ray Serve deployment serving ``models`` ({name: package folder}) with ``config``, replicas as asked.

    ``max_ongoing_requests`` defaults to what one replica can hold: the jobs it runs at once plus its queue, so Ray
    routes the rest to other replicas (or back-pressures) instead of piling them on one."""
    config = config or ServeConfig()
    models = dict(models)
    if max_ongoing_requests is None:
        max_ongoing_requests = config.max_batch + config.max_queue

    def app_builder():
        from .app import create_app
        from .server import Server

        server = Server(models, config)
        server.start(background=False)  # in the replica's start: it serves only once its models are loaded
        return create_app(server=server)

    options: dict[str, Any] = {
        "name": name,
        "ray_actor_options": dict(ray_actor_options or {"num_cpus": 1}),
        "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": health_check_period_s,
    }
    if autoscaling_config is not None:
        options["autoscaling_config"] = dict(autoscaling_config)
    elif num_replicas is not None:
        options["num_replicas"] = num_replicas

    @serve.ingress(app_builder)
    class DiffrtServe:
        """A replica: the app is built, and its models loaded, when the replica starts."""

        def check_health(self) -> None:
            server = self._asgi_app.state.server
            if server.load_error is not None:
                raise RuntimeError(server.load_error)

    return serve.deployment(**options)(DiffrtServe)


def build_app(args: Mapping[str, Any]):
    """The application builder ``serve run`` / KubeRay call with the config file's ``args``: ``models`` ({name:
    package folder}), any :class:`~.server.ServeConfig` field (``max_batch``, ``max_queue``, limits...), and the
    deployment's ``num_replicas`` / ``ray_actor_options`` / ``autoscaling_config`` (also settable per deployment in
    the config file)."""
    args = dict(args)
    models = args.pop("models", None)
    if not isinstance(models, Mapping) or not models:
        raise ValueError("diffrt.serve.ray.build_app needs args.models: {name: engine package folder}")
    deployment_keys = ("name", "num_replicas", "ray_actor_options", "autoscaling_config", "max_ongoing_requests")
    deploy = {key: args.pop(key) for key in deployment_keys if key in args}
    known = {f.name for f in fields(ServeConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(f"diffrt.serve.ray.build_app: unknown args {unknown}; accepted: models, {sorted(known)}")
    if "api_keys" in args:
        args["api_keys"] = tuple(args["api_keys"])
    config = replace(ServeConfig(), **args)
    return deployment(models, config, **deploy).bind()
