"""`realign push`: upload a `realign fix` output to the Hugging Face Hub as a model repository.

huggingface_hub does the work (create_repo, then upload_folder: one commit, large files through
the Hub's storage). realign only checks that the folder is a fix output and that it carries its
model card, and turns the Hub's errors into one line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RealignError


def ensure_card(out: Path) -> None:
    """Write README.md from realign.json unless it is already realign's card (kept: the user may
    have edited it). Outputs from before cards existed hold none, or (adapters) peft's
    placeholder, whose local-path `base_model` the Hub would refuse."""
    from huggingface_hub import ModelCard

    from .card import TAGS, model_card

    readme = out / "README.md"
    if readme.is_file():
        try:
            if TAGS[0] in (ModelCard.load(readme).data.tags or []):
                return
        except ValueError:      # unparsable metadata: not ours
            pass
    meta = json.loads((out / "realign.json").read_text())
    model_card(meta).save(readme)


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise RealignError(f"{repo_id!r} is not a Hub repo id (user/name): {str(e).splitlines()[0]}") from None


def push_output(out: Path, repo_id: str, private: bool | None = None, token: str | None = None,
                endpoint: str | None = None) -> str:
    """Create (or reuse) the model repo `repo_id` and upload every file of `out`; returns the commit URL."""
    from huggingface_hub import HfApi
    # HTTPError: the base of the HTTP client's errors (connection refused, DNS, TLS, timeouts) that
    # huggingface_hub's own errors build on; it re-exports it whichever client it uses
    from huggingface_hub.errors import HfHubHTTPError, HTTPError

    check_repo_id(repo_id)
    out = Path(out)
    if not (out / "realign.json").is_file():
        raise RealignError(f"{out} is not a realign fix output (no realign.json); push the --out dir of `realign fix`")
    ensure_card(out)
    meta = json.loads((out / "realign.json").read_text())
    api = HfApi(endpoint=endpoint, token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(repo_id=url.repo_id, folder_path=out, repo_type="model",
                                   commit_message=f"realign fix: recipe {meta['recipe']['name']} "
                                                  f"(realign {meta['realign_version']})")
    except HfHubHTTPError as e:     # the Hub answered: its own message says why (bad token, no rights …)
        status = e.response.status_code if e.response is not None else "?"
        hint = "; give a token with write access (--token, HF_TOKEN or `hf auth login`)" if status in (401, 403) else ""
        raise RealignError(f"push to {repo_id} failed: the Hub answered {status}: "
                           f"{e.server_message or _first_line(e)}{hint}") from None
    except ValueError as e:     # the Hub's check of README.md's metadata
        raise RealignError(f"push to {repo_id} refused: {_first_line(e)}") from None
    except (HTTPError, OSError) as e:
        raise RealignError(f"push to {repo_id} failed: could not reach {api.endpoint} ({e})") from None
    return commit.commit_url


def _first_line(e: Exception) -> str:
    lines = [ln.strip(" -") for ln in str(e).splitlines() if ln.strip(" -")]
    return " — ".join(lines[:2]) if lines else type(e).__name__
