"""timm's published NF checkpoints from the Hugging Face Hub, fetched as timm fetches them.

timm's pretrained config of `eca_nfnet_l0.ra2_in1k` names the Hub repository
`timm/eca_nfnet_l0.ra2_in1k`, and timm loads its `model.safetensors` through
`huggingface_hub.hf_hub_download`. nf does the same, so both share one download in
huggingface_hub's cache: `HF_HUB_CACHE` (or `HF_HOME`) choose where it lies, and
`HF_HUB_OFFLINE=1` reads the cache without touching the network. huggingface_hub is the optional
extra `hub` (`pip install 'nfnets-flax[hub]'`); with `--weights=FILE` nothing is fetched.
"""

from __future__ import annotations

from nf.pretrained.catalog import TIMM_HUB_FILE
from nf.pretrained.timm import catalog_entry


def timm_hub_id(name: str) -> str:
    """timm's Hub repository of `name` ('eca_nfnet_l0' or with its tag 'eca_nfnet_l0.ra2_in1k')."""
    hub_id = catalog_entry(name)["hub_id"]  # validates the name
    base, _, tag = name.partition(".")
    return f"timm/{base}.{tag}" if tag else hub_id


def fetch_timm(name: str, revision: str | None = None) -> str:
    """The local path of timm's `model.safetensors` of `name`, from huggingface_hub's cache or
    downloaded into it; errors say what is missing and what to do."""
    repo = timm_hub_id(name)
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ImportError(
            f"fetching {repo} needs huggingface_hub: pip install 'nfnets-flax[hub]' (or download "
            f"{TIMM_HUB_FILE} yourself and pass --weights=FILE)"
        ) from None
    where = f"{repo}/{TIMM_HUB_FILE}" + (f" at revision {revision}" if revision else "")
    try:
        return hf_hub_download(repo, TIMM_HUB_FILE, revision=revision, library_name="nf")
    except LocalEntryNotFoundError:
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{where} is not in the Hugging Face cache {constants.HF_HUB_CACHE} and {offline}: connect to "
            "the Hub once (unset HF_HUB_OFFLINE), point HF_HUB_CACHE at a cache that holds it, or pass "
            "--weights=FILE"
        ) from None
    except EntryNotFoundError:
        raise FileNotFoundError(
            f"{repo} has no {TIMM_HUB_FILE}; nf reads only safetensors files (never pickled PyTorch weights)"
        ) from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"the Hub has no repository {repo}{f' (revision {revision})' if revision else ''}; "
            "nf-import --list shows the published names"
        ) from None
