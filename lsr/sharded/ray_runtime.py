"""The Ray runtime shared by sharded building and searching: start or join it, get results, kill actors."""

from __future__ import annotations

import logging
import os

log = logging.getLogger("lsr.sharded")


def ray_module():
    """The ray module, or an ImportError saying how to install it."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("sharded indexes need Ray: pip install 'lsr[ray]'") from None
    return ray


def kill_actors(actors) -> None:
    """Kill Ray actors, ignoring those already gone."""
    ray = ray_module()
    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``auto``, ``ray://host:port``), or start a local runtime with
    ``num_cpus`` CPUs (default: all of this machine's); a runtime already started in this process is reused."""
    ray = ray_module()
    if ray.is_initialized():
        return ray
    quiet = {"log_to_driver": os.environ.get("LSR_RAY_LOGS") == "1", "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **quiet)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
    return ray


def ray_get(refs):
    """``ray.get`` that re-raises a remote exception as itself (a CorpusError stays a CorpusError)."""
    ray = ray_module()
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, Exception):
            log.debug("remote error: %s", err)
            raise cause from None
        raise


_ACTOR_CLASSES: dict[str, object] = {}


def actor_class(cls):
    """The Ray actor class of ``cls`` (made once per process)."""
    if cls.__name__ not in _ACTOR_CLASSES:
        _ACTOR_CLASSES[cls.__name__] = ray_module().remote(cls)
    return _ACTOR_CLASSES[cls.__name__]
