"""DeepCache at run time (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free"): the UNet's deep
features change little from one denoising step to the next, so steps between two full UNet runs run only its
shallow path, on the deep features the last full run left.

A package exported with ``diffrt export --deepcache`` has, per branch ``b``, a UNet output ``deep_features.{b}``
and a graph ``unet_shallow_{b}`` that takes them (:func:`~diffrt.runtime.networks.unet_shallow_network`). With
``cache_interval=N``, step ``i`` of a call (0-based) runs the whole UNet when ``i % N == 0`` and the shallow graph
otherwise: DeepCacheSDHelper's ``skip_mode="uniform"`` with ``cache_branch_id=b``. The cache belongs to one call (its
:class:`~.call.Call`); the pipeline, which every thread shares, holds none of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engines import Engine
from ..errors import ConfigError
from ..networks import DEEP_FEATURES, unet_shallow_name


@dataclass
class FeatureCache:
    """One call's DeepCache state: its interval and branch, the branch's shallow UNet, and the deep features of the
    last full step."""

    interval: int
    branch: int
    shallow: Engine
    features: np.ndarray | None = None
    """(UNet batch, C, h, w): the full UNet's ``deep_features.{branch}`` at the last step that ran it."""

    def run(self, unet: Engine, feeds: dict[str, np.ndarray], step: int) -> np.ndarray:
        """``out_sample`` of denoising step ``step``: the whole UNet on full steps (keeping its deep features), else
        the shallow UNet on the cached ones. A step whose UNet batch differs from the cached features' (a callback
        that stopped guidance) runs the whole UNet."""
        cached = self.features
        if step % self.interval == 0 or cached is None or cached.shape[0] != feeds["sample"].shape[0]:
            name = f"{DEEP_FEATURES}.{self.branch}"
            outputs = unet.run(feeds, ["out_sample", name])
            self.features = outputs[name]
            return outputs["out_sample"]
        return self.shallow.run({**feeds, DEEP_FEATURES: cached}, ["out_sample"])["out_sample"]


def feature_cache(package, cache_interval: int | None, cache_branch: int) -> FeatureCache | None:
    """A call's cache for ``cache_interval`` / ``cache_branch``, checked against what ``package`` (an
    :class:`~diffrt.runtime.package.EnginePackage`) holds; None when every step runs the whole UNet (no interval,
    or 1)."""
    if cache_interval is None or cache_interval == 1:
        return None
    branches = package.deepcache_branches
    if not branches:
        raise ConfigError(
            f"cache_interval={cache_interval} needs a package exported with DeepCache's shallow UNets "
            f"(`diffrt export SOURCE OUT --deepcache`); {str(package.path)!r} has none; accepted with it: "
            "cache_interval None or 1."
        )
    if cache_branch not in branches:
        raise ConfigError(
            f"cache_branch={cache_branch!r} has no shallow UNet in this package; accepted: "
            f"{', '.join(map(str, branches))}."
        )
    return FeatureCache(cache_interval, cache_branch, package.engine(unet_shallow_name(cache_branch)))
