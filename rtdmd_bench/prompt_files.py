"""Public prompt files: checksum-verified cached downloads, and prompt sources by name or path.

The project never ships prompt files. A source is either a local path or the name of a public
file, e.g. `rtdmd:pickscore/train.txt` (RTDMD's `dataset/` folder at the commit its published
models were trained from); named files are fetched once into `paths.cache_dir("prompts")`,
verified (SHA-256, or the git blob id where only that was readable) and written atomically.
Offline, the error names the URL and the option that takes a local copy instead.

Formats: `.txt` one prompt per line (blank lines dropped); `.json` a list of strings; `.jsonl`
one object per line with a "prompt" field (GenEval-style metadata: "tag", "include", ...).
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rtdmd_bench.errors import UserError
from rtdmd_bench.files import atomic_path
from rtdmd_bench.paths import cache_dir

RTDMD_COMMIT = "6c3cb0309732b34313d296ca78d02b5f88a50ca0"
"""Harahan/RTDMD commit the official training files are pinned to."""
RTDMD_RAW = f"https://raw.githubusercontent.com/Harahan/RTDMD/{RTDMD_COMMIT}/dataset/"


@dataclass(frozen=True)
class OfficialFile:
    """A public prompt file and the checksum it must have."""

    url: str
    sha256: str
    filename: str
    lines: int  # number of prompts (entries) in the file; a shorter run is marked partial (0: unknown)
    git_blob: str = ""  # git blob id (SHA-1 of "blob <size>\0" + bytes): the check when sha256 is unknown


TRAINING: dict[str, OfficialFile] = {
    "rtdmd:pickscore/train.txt": OfficialFile(
        RTDMD_RAW + "pickscore/train.txt",
        "2f425adcbb9a6d0feee7c6c448e1cb83a1f71deca9434b803907e2578eca837f", "rtdmd_pickscore_train.txt", 25432,
        "a437bd921c03fbc00c4e7ce148ae2d28fcd6e49b"),
    "rtdmd:geneval/train_metadata.jsonl": OfficialFile(
        RTDMD_RAW + "geneval/train_metadata.jsonl", "", "rtdmd_geneval_train_metadata.jsonl", 0,
        "0b97e8a6802c08fc7537cd00c76ae79c851bddcb"),
    "rtdmd:geneval2/merged.jsonl": OfficialFile(
        RTDMD_RAW + "geneval2/merged.jsonl", "", "rtdmd_geneval2_merged.jsonl", 0,
        "a41371f7cb96230c7d4b0cc1fa0b124d8f596a10"),
}
"""Official RTDMD training prompt sets: stage 1 (cold start) trains on the PickScore training
prompts (configs/cold_start/*.yaml prompt_path dataset/pickscore), stage 2 on GenEval-style training
metadata (configs/rtdmd/*.yaml prompt_path dataset/geneval), whose clauses the GenEval reward reads.
RTDMD's GenEval2 reward looks each prompt's VQA list up in geneval2/merged.jsonl (its 20,000 training
lines + the 800 GenEval2 test lines; git blob read from the commit's tree, the file itself not)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_blob_of(path: Path) -> str:
    """The git object id of a file's bytes (what `git hash-object` prints)."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _verified(path: Path, sha256: str, git_blob: str) -> bool:
    return sha256_of(path) == sha256 if sha256 else git_blob_of(path) == git_blob


def download_verified(url: str, sha256: str, dest: Path, timeout: float = 30.0, git_blob: str = "",
                      option: str = "--set suite.prompts=PATH") -> Path:
    """Fetch `url` to `dest` (atomically) if `dest` is absent or does not pass the check."""
    if not (sha256 or git_blob):
        raise ValueError(f"{url}: no checksum to verify against")
    if dest.exists() and _verified(dest, sha256, git_blob):
        return dest
    try:
        with atomic_path(dest) as tmp:  # moved into place only once verified
            with urllib.request.urlopen(url, timeout=timeout) as response:
                tmp.write_bytes(response.read())
            if not _verified(tmp, sha256, git_blob):
                got = sha256_of(tmp) if sha256 else git_blob_of(tmp)
                raise UserError(f"the file downloaded from {url} has {'SHA-256' if sha256 else 'git blob id'} {got}, "
                                f"expected {sha256 or git_blob}: the upstream file changed or the download is "
                                f"corrupt; pass a verified copy with {option}")
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise UserError(f"could not download the prompt file {url} ({err}); download it yourself and pass "
                        f"{option}") from err
    return dest


def resolve_source(source: str, option: str) -> Path:
    """The file of a prompt source: a registered name (TRAINING) -> its verified cached download,
    else a local path that must exist. `option` names the setting, for messages."""
    if source in TRAINING:
        spec = TRAINING[source]
        return download_verified(spec.url, spec.sha256, cache_dir("prompts") / spec.filename,
                                 git_blob=spec.git_blob, option=f"{option}=PATH")
    if source.startswith("rtdmd:"):
        raise UserError(f"unknown prompt set {source!r} in {option}; named sets: {', '.join(TRAINING)}")
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file {path} does not exist: fix {option}=PATH (a file, or one of "
                        f"{', '.join(TRAINING)})")
    return path


def read_text(path: Path, what: str = "prompt file") -> str:
    """The UTF-8 text of `path`; a binary file, a folder or an unreadable file is a UserError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text (a binary file?): pass a text file") from None
    except OSError as err:
        raise UserError(f"{what} {path} cannot be read ({err.strerror or err})") from None


def read_json_list(path: Path) -> list[str]:
    """A .json prompt file: one JSON list of strings."""
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not JSON ({err}); expected a JSON list of prompt strings") from None
    if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
        raise UserError(f"{path}: expected a JSON list of prompt strings")
    return data


def read_prompts(path: Path) -> list[str]:
    """The prompts of a .txt, .json (list of strings) or .jsonl (objects with "prompt") file."""
    text = read_text(path)
    if path.suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                prompts.append(str(json.loads(line)["prompt"]))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise UserError(f"{path}:{n}: expected a JSON object with a \"prompt\" field ({err})") from err
    elif path.suffix == ".json":
        prompts = read_json_list(path)
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise UserError(f"prompt file {path} holds no prompts")
    return prompts


def load_source(source: str, option: str) -> list[str]:
    """`read_prompts(resolve_source(...))`."""
    return read_prompts(resolve_source(source, option))
