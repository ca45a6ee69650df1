"""Find and load pretrained encoder weights, offline first.

Sources, in order: ``--weights PATH`` (a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` state
dict, or a folder that is a local hub snapshot holding ``model.safetensors`` /
``pytorch_model.bin``), the Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``; read at call time), and -- unless ``HF_HUB_OFFLINE`` is
set -- a download into that cache. Weights that cannot be found raise one
:class:`~wsipipe.errors.EncoderWeightsError` line naming the encoder, where it looked and the
fixes; nothing ever falls back to a random initialisation.

Loading is strict: every parameter and buffer of the architecture must come from the file,
and nothing in the file may be left over (the classifier of an ImageNet checkpoint is the one
exception, dropped because wsipipe builds encoders without it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from wsipipe.encoders.registry import EncoderEntry
from wsipipe.errors import EncoderWeightsError

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
SNAPSHOT_FILES = ("model.safetensors", "pytorch_model.bin")
_WRAPPERS = ("state_dict", "model", "module", "teacher")  # keys of checkpoint dicts
_TRUE = ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, from the environment as it is now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache")), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def _cached_repo_id(repo: str, cache: Path) -> str:
    """``repo`` as spelled by its folder in ``cache`` (hub ids are case-insensitive)."""
    want = "models--" + repo.replace("/", "--")
    if (cache / want).is_dir() or not cache.is_dir():
        return repo
    for entry in cache.iterdir():
        if entry.name.lower() == want.lower() and entry.is_dir():
            return entry.name[len("models--") :].replace("--", "/", 1)
    return repo


def find_in_cache(repo: str, files: Sequence[str], cache: Path) -> Path | None:
    """The first of ``files`` in the cached snapshot of ``repo`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id = _cached_repo_id(repo, cache)
    for name in files:
        hit = try_to_load_from_cache(repo_id, name, cache_dir=str(cache))
        if isinstance(hit, str):
            return Path(hit)
    return None


def _fixes(label: str, repo: str, gated: bool, access: str) -> str:
    fix = f"populate the cache with `hf download {repo}` (or `huggingface-cli download {repo}`)"
    if gated:
        fix += f" after requesting access at {access} and `hf auth login`"
    return (
        f"fix: {fix}, or pass --weights PATH (a .pth/.bin/.safetensors state dict or a local "
        "snapshot folder), or --no-pretrained for random weights"
    )


def download(label: str, repo: str, files: Sequence[str], cache: Path, gated: bool,
             access: str) -> Path:  # fmt: skip
    """Download the first of ``files`` that ``repo`` has into ``cache`` (network)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, HfHubHTTPError

    last: Exception | None = None
    for name in files:
        try:
            return Path(hf_hub_download(repo, name, cache_dir=str(cache)))
        except EntryNotFoundError as exc:  # try the next file name
            last = exc
        except GatedRepoError:
            raise EncoderWeightsError(
                f"encoder {label!r}: {repo} is gated and this account has no access; request "
                f"access at {access or 'https://huggingface.co/' + repo}, run `hf auth login`, "
                "or pass --weights PATH"
            ) from None
        except (HfHubHTTPError, OSError, ValueError) as exc:
            last = exc
            break
    reason = str(last).splitlines()[0] if last else "no weight file"
    raise EncoderWeightsError(
        f"encoder {label!r}: could not download {'/'.join(files)} of {repo} into {cache} "
        f"({reason}); {_fixes(label, repo, gated, access)}"
    )


def hub_weights(label: str, repo: str, files: Sequence[str], gated: bool = False,
                access: str = "") -> Path:  # fmt: skip
    """Weights of ``repo`` from the hub cache, downloading only when not offline."""
    cache = hub_cache_dir()
    hit = find_in_cache(repo, files, cache)
    if hit is not None:
        return hit
    if hub_offline():
        raise EncoderWeightsError(
            f"encoder {label!r}: pretrained weights not found: looked for {', '.join(files)} "
            f"of {repo} in the hub cache {cache} (HF_HUB_OFFLINE=1, no download); "
            f"{_fixes(label, repo, gated, access)}"
        )
    return download(label, repo, files, cache, gated, access)


def local_weights(label: str, weights: str | Path, files: Sequence[str] = SNAPSHOT_FILES) -> Path:
    """The state-dict file that ``--weights`` names (a file, or a snapshot folder)."""
    path = Path(weights).expanduser()
    if path.is_dir():
        for name in (*files, *SNAPSHOT_FILES):
            if (path / name).is_file():
                return path / name
        raise EncoderWeightsError(
            f"encoder {label!r}: --weights {path} is a folder without "
            f"{' or '.join(dict.fromkeys((*files, *SNAPSHOT_FILES)))}; fix: point --weights at "
            "the state-dict file or at a hub snapshot folder (`hf download REPO --local-dir DIR`)"
        )
    if not path.is_file():
        raise EncoderWeightsError(
            f"encoder {label!r}: --weights {path} does not exist; fix: give a .pth/.bin/"
            ".safetensors state dict or a local snapshot folder"
        )
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise EncoderWeightsError(
            f"encoder {label!r}: --weights {path}: unknown file type {path.suffix!r}; fix: "
            f"give a state dict ({', '.join(STATE_DICT_SUFFIXES)}) or a snapshot folder"
        )
    return path


def read_state_dict(path: Path, label: str) -> dict[str, Tensor]:
    """A flat ``{name: tensor}`` state dict from ``path`` (CPU; no pickled code executed)."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state: object = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        unsafe, reason = torch_load_failure(exc)
        if unsafe:
            raise EncoderWeightsError(
                f"encoder {label!r}: weights {path} refused as unsafe: the file holds pickled "
                f"objects ({unsafe}) that loading would build or run; fix: give a plain "
                "tensor state dict (.pth/.bin) or a .safetensors file"
            ) from None
        raise EncoderWeightsError(
            f"encoder {label!r}: cannot read weights {path} ({reason}); fix: give a torch "
            "state dict (.pth/.bin) or a .safetensors file"
        ) from None
    # unwrap {"state_dict": {...}} / {"model": {...}} training checkpoints
    while isinstance(state, dict) and not any(isinstance(v, Tensor) for v in state.values()):
        inner = [state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)]
        if len(inner) != 1:
            break
        state = inner[0]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(v, Tensor) for v in state.values())
    ):
        raise EncoderWeightsError(
            f"encoder {label!r}: {path} holds no state dict of tensors; fix: save "
            "model.state_dict() (torch.save or safetensors)"
        )
    return {str(k): v for k, v in state.items()}


def strip_prefixes(state: dict[str, Tensor], prefixes: Sequence[str]) -> dict[str, Tensor]:
    """Remove each of ``prefixes`` from the keys that start with it (``module.x`` -> ``x``)."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    clf = cfg.get("classifier") if isinstance(cfg, dict) else None
    names = (clf,) if isinstance(clf, str) else tuple(clf or ())
    return tuple(f"{n}." for n in names)


def load_strict(model: nn.Module, state: dict[str, Tensor], label: str, source: str) -> None:
    """Load ``state`` into ``model``; anything missing, left over or misshapen is an error."""
    own = model.state_dict()
    # ImageNet checkpoints carry the classifier the encoder was built without
    drop = tuple(p for p in _classifier_prefixes(model) if not any(k.startswith(p) for k in own))
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise EncoderWeightsError(
            f"encoder {label!r}: weights {source} do not fit its architecture: "
            f"{mismatch}; fix: give the weights of this encoder (`wsipipe encoders` "
            "lists each one's source)"
        )
    model.load_state_dict(state, strict=True)


def state_dict_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``own``: counts and
    first names of the missing, unexpected and misshapen entries ("" when it fits)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f", ... ({len(keys)})" if len(keys) > 3 else "")

    parts = [f"{len(missing)} missing ({few(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({few(unexpected)})"] if unexpected else []
    if shapes:
        k = shapes[0]
        first = f"{k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        parts.append(
            f"{len(shapes)} of another shape ({first}{', ...' if len(shapes) > 1 else ''})"
        )
    return "; ".join(parts)


def torch_load_failure(exc: BaseException) -> tuple[str, str]:
    """Why ``torch.load(weights_only=True)`` failed: (the refused global, e.g. "posix.system",
    when the file holds pickled objects that loading would build or run, else ""; torch's
    reason in one line, without its advice to retry with ``weights_only=False``)."""
    import re

    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    kept = [
        " ".join(part.split())
        for part in text.split("\n\n")
        if part.strip() and not re.search(r"weights_only|Check the documentation", part)
    ]
    reason = "; ".join(kept) or type(exc).__name__
    return (found.group(1) if found else ""), reason


KeyMap = Callable[[dict[str, Tensor], nn.Module], dict[str, Tensor]]


def _effnet_lite(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    from wsipipe.encoders import effnet_lite

    if not effnet_lite.is_reference_layout(state):
        return state  # already timm's layout
    return effnet_lite.map_reference_state(state, effnet_lite.block_layout(model))


def _hf_dinov2(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    from wsipipe.encoders.hf_dinov2 import hf_dinov2_to_timm

    return hf_dinov2_to_timm(state, model)


KEY_MAPS: dict[str, KeyMap] = {"efficientnet-lite": _effnet_lite, "hf-dinov2": _hf_dinov2}


def entry_weights_path(entry: EncoderEntry, weights: str | Path | None) -> Path:
    """Where the weights of ``entry`` are: ``--weights``, its package, or the hub cache."""
    if weights is not None:
        return local_weights(entry.name, weights, entry.weight_files)
    if entry.weights_from == "package":
        from wsipipe.encoders import effnet_lite

        assert entry.package is not None  # validated by the entry
        return effnet_lite.package_weights_path(entry.name, entry.package)
    if entry.weights_from == "hub":
        assert entry.hub_repo is not None  # validated by the entry
        return hub_weights(entry.name, entry.hub_repo, entry.weight_files, entry.gated,
                           entry.access)  # fmt: skip
    raise EncoderWeightsError(
        f"encoder {entry.name!r} has no pretrained weights; fix: pass --weights PATH or "
        "--no-pretrained"
    )


def load_entry_weights(model: nn.Module, entry: EncoderEntry, path: Path) -> None:
    """Read ``path``, bring it to timm's layout as ``entry`` says, load strictly."""
    state = read_state_dict(path, entry.name)
    if entry.strip_prefixes:
        state = strip_prefixes(state, entry.strip_prefixes)
    if entry.key_map is not None:
        state = KEY_MAPS[entry.key_map](state, model)
    load_strict(model, state, entry.name, str(path))
