"""Doctor checks of the Hugging Face hub, read locally (HF_HUB_OFFLINE=1, models resolved with `offline=True`):
the login, the cache, and which of vidpipe's known models run from the cache alone."""

from __future__ import annotations

import os
from pathlib import Path

from vidpipe.doctor.check import GB, INFO, OK, WARN, Check


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}  # huggingface_hub's own reading


def check_hub_login(user_offline: str | None) -> Check:
    """Logged in to the Hugging Face hub or not (read locally; the token itself is never shown)."""
    from huggingface_hub import get_token

    offline = "; HF_HUB_OFFLINE is set: runs use cached models only" if _is_true(user_offline) else ""
    details = {"logged_in": False, "offline": _is_true(user_offline)}
    if get_token() is None:
        return Check("hub login", INFO, "not logged in" + offline,
                     "public models download without it; gated or private repos need `hf auth login`", details)
    variable = next((name for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN") if os.environ.get(name)), None)
    source = f"the {variable} variable" if variable else "a saved token"
    return Check("hub login", OK, f"logged in ({source}){offline}", details={**details, "logged_in": True})


def hub_cache_root(cache_dir: Path | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)


def known_hub_models() -> dict[str, str]:
    """Short name -> hub repo of the models vidpipe names: the registry's aliases and generate's default."""
    from vidpipe.config import GenerateConfig
    from vidpipe.models.registry import HUB_ALIASES

    models = dict(HUB_ALIASES)
    if GenerateConfig.model not in models.values():
        models[GenerateConfig.model] = GenerateConfig.model
    return models


def model_readiness(name: str, cache_dir: Path | None) -> str | None:
    """None when model `name` resolves from the cache alone (weights and configs), else why not."""
    from vidpipe.errors import UsageError
    from vidpipe.models.registry import resolve_model

    try:
        resolve_model(name, offline=True, cache_dir=cache_dir)
    except UsageError as error:
        return str(error)
    return None


def check_hub_cache(cache_dir: Path | None) -> Check:
    """Where the Hugging Face cache is, its size, and which of vidpipe's known models it holds ready to run."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    from vidpipe.config import GenerateConfig

    root = hub_cache_root(cache_dir)
    fetch = "the first generate downloads its default model here; --model tiny or svd-xt-random need no download"
    try:
        info = scan_cache_dir(root)
    except CacheNotFound:
        return Check("hub cache", INFO, f"{root}: no cache yet (nothing downloaded)", fetch,
                     {"path": str(root), "exists": False, "models": {}})
    sizes = {repo.repo_id: repo.size_on_disk for repo in info.repos if repo.repo_type == "model"}
    lines, ready = [f"{root}: {len(info.repos)} repo(s), {info.size_on_disk / GB:.1f} GB"], {}
    for name, repo_id in known_hub_models().items():
        label = name if name == repo_id else f"{name} ({repo_id})"
        if repo_id not in sizes:
            lines.append(f"{label}: not cached")
            continue
        ready[name] = model_readiness(name, cache_dir) is None
        state = "ready offline" if ready[name] else "partly cached, not runnable offline"
        lines.append(f"{label}: {sizes[repo_id] / GB:.1f} GB, {state}")
    details = {"path": str(root), "exists": True, "size_bytes": info.size_on_disk, "repos": sorted(sizes),
               "models": ready, "warnings": [str(w) for w in info.warnings]}
    if info.warnings:
        return Check("hub cache", WARN, "\n".join(lines + [f"{len(info.warnings)} corrupted entries"]),
                     "`hf cache scan` shows them; delete and download again", details)
    default_ready = any(ready.get(n) for n, repo in known_hub_models().items() if repo == GenerateConfig.model)
    return Check("hub cache", OK if default_ready else INFO, "\n".join(lines), "" if default_ready else fetch, details)
