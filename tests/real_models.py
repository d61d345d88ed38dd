"""The two released models at their true size, with random weights, built offline (a test helper).

`build_real_model(name)` writes a folder in the layout of the model's Hub checkpoint, for
`smolvlm-256m` (HuggingFaceTB/SmolVLM-256M-Instruct, 256,484,928 parameters) and `qwen2-vl-2b`
(Qwen/Qwen2-VL-2B-Instruct, 2,208,985,600 parameters), from the published configuration files in
`shared/real-configs/` (`$HI_REAL_CONFIGS` overrides where that folder is):

- `config.json`, `preprocessor_config.json`, `processor_config.json` (SmolVLM only; Qwen2-VL ships
  none), `chat_template.jinja` and `generation_config.json`: the published files, copied as they are;
- the weights: the model `from_config` of that config.json (built on the meta device, never
  materialized as a whole), every tensor drawn on its own: norm weights 1, biases 0, every other
  tensor N(0, 0.02) from a generator seeded with the tensor's name and `SEED`, so the weights are
  deterministic and do not depend on the order they are written in. Saved with safetensors **in the
  config's `torch_dtype`, bfloat16 for both** (as published: 0.5 GB and 4.4 GB on disk; a float32
  load, the loader's default on CPU, upcasts them, ~1 GB and ~8.8 GB in memory), in shards of at most
  2 GiB with a `model.safetensors.index.json` above that (Qwen2-VL: 3 shards), the tied output
  embedding (Qwen2-VL) not saved twice (4,417,971,200 bytes in all, the published index's total). The
  shards are written one at a time, so building needs one shard, safetensors' byte copy of it and one
  float32 tensor in memory (peak RSS 5.3 GB for Qwen2-VL, 1.2 GB for SmolVLM), not the model's size;
- a **stand-in tokenizer** (`stand_in_tokenizer`): the real vocabulary size (SmolVLM 49,280; Qwen2
  151,657 = 151,643 BPE tokens + 14 added; the model's embedding is the config's `vocab_size`,
  151,936 for Qwen2-VL, as released) and every special and added token of `special_tokens.json`
  at its real id, so the processor makes exactly the token layout the released model sees. Ordinary
  text is byte-level BPE (GPT-2's byte alphabet, the released tokenizers' scheme) with merges trained
  on a fixed list of common English words (`WORDS`): those words are one token each (with or without
  a leading space), any other text falls back to shorter pieces, down to single bytes; never an
  unknown token. The ids the BPE does not use are filled with never-produced `<|stand-in-N|>` tokens.

The folder goes to a cache outside the repository, `~/.cache/hi-explorer/real-size/<name>`
(`$HI_REAL_MODELS_DIR/<name>`, or `cache_dir/<name>`, instead). It is built once, in a temporary
folder beside it renamed into place when complete (under a file lock, so two builders do not race),
and reused while its `real-size.json` records the same fingerprint of the published files and of
this builder (`BUILD_VERSION`); otherwise it is rebuilt. `real_processor(name)` builds just the
processor (tokenizer, image processor, chat template) the way `hi_core.model.loading` does, for cheap tests.

SmolVLM-256M's `model_type` is `idefics3` (its processor class Idefics3Processor, which owns no video
processor); Qwen2-VL's processor owns one, so without torchvision `hi_core.model.loading` assembles it
from the tokenizer and image processor.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch

REAL_MODELS = {
    "smolvlm-256m": "HuggingFaceTB__SmolVLM-256M-Instruct",
    "qwen2-vl-2b": "Qwen__Qwen2-VL-2B-Instruct",
}
BUILD_VERSION = 1  # bump when the folder this module writes changes
SEED = 0
INIT_STD = 0.02
SHARD_BYTES = 2 * 1024**3
INFO_FILE = "real-size.json"  # written last: its presence (and fingerprint) marks a complete folder
PUBLISHED_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "chat_template.jinja")

# Ordinary text of the stand-in tokenizer: these words become single BPE tokens.
WORDS = """
a an the this that these those it its is are was were be been being has have had do does did not no yes
and or but of in on at to from with without by for about into onto over under above below near next
between behind beside front back top bottom left right center middle corner side edge up down out off
there here what which who where when how why many much some any all each every both one two three four
five six seven eight nine ten first second third other another same different more most less only very
describe description image picture photo photograph scene view shown show shows showing see seen look
looks looking find point answer question please briefly detail details detailed short long word words
red green blue yellow orange purple pink brown black white gray grey dark light bright colour color
colored colorful big small large little tiny huge tall wide narrow round square flat thin thick old new
circle square triangle star rectangle line box ball shape shapes object objects pattern background
cat cats dog dogs bird birds horse cow sheep animal animals person people man men woman women child
children boy girl face hand hands head hair eye eyes shirt hat dress coat shoe shoes bag umbrella
car cars bus truck train bicycle bike motorcycle boat plane airplane road street sidewalk sign light
tree trees grass flower flowers plant plants leaf leaves sky cloud clouds sun water sea river lake beach
sand snow mountain hill field park garden house building buildings wall window door roof floor room
table chair chairs sofa couch bed desk kitchen plate bowl cup glass bottle food pizza cake sandwich fruit
apple banana orange phone laptop computer screen keyboard book books clock lamp vase mirror picture
rocket astronaut coffee mug toy toys game sport sports player ball tennis soccer frisbee kite skateboard
sitting standing walking running lying holding wearing eating playing riding flying driving parked
open closed empty full wooden metal plastic stone glass paper
user assistant system
""".split()


# --- where things are -------------------------------------------------------------------------------

def real_configs_dir() -> Path:
    """The published configuration files: `$HI_REAL_CONFIGS`, else `shared/real-configs` beside the repository."""
    override = os.environ.get("HI_REAL_CONFIGS")
    folder = Path(override).expanduser() if override else Path(__file__).resolve().parents[2] / "shared" / "real-configs"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"the published configuration files of the real-size models are not at {folder}: expected a folder with "
            f"{', '.join(sorted(REAL_MODELS.values()))} (set HI_REAL_CONFIGS to where it is)"
        )
    return folder


def source_dir(name: str) -> Path:
    """The published files of model `name` (a key of REAL_MODELS)."""
    if name not in REAL_MODELS:
        raise ValueError(f"unknown real-size model {name!r}: expected one of {', '.join(REAL_MODELS)}")
    folder = real_configs_dir() / REAL_MODELS[name]
    missing = [file for file in ("config.json", "preprocessor_config.json", "chat_template.jinja", "special_tokens.json")
               if not (folder / file).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: not a complete copy of {REAL_MODELS[name]}'s published files")
    return folder


def models_dir(cache_dir: Path | None = None) -> Path:
    """Where built folders go: `cache_dir`, else `$HI_REAL_MODELS_DIR`, else ~/.cache/hi-explorer/real-size."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    override = os.environ.get("HI_REAL_MODELS_DIR")
    return Path(override).expanduser() if override else Path.home() / ".cache" / "hi-explorer" / "real-size"


def fingerprint(name: str) -> str:
    """A hash of the model's published files and of this builder's settings: a cached folder with
    another fingerprint is rebuilt."""
    digest = hashlib.sha256(f"{BUILD_VERSION}:{SEED}:{INIT_STD}:{SHARD_BYTES}:{' '.join(WORDS)}".encode())
    folder = source_dir(name)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SOURCE.md"):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


# --- the stand-in tokenizer -------------------------------------------------------------------------

def _published(name: str) -> dict[str, Any]:
    return json.loads((source_dir(name) / "special_tokens.json").read_text())


def _raw_tokenizer_config(name: str) -> dict[str, Any]:
    path = source_dir(name) / "raw" / "tokenizer_config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _trained_bpe() -> tuple[list[str], list[tuple[str, str]]]:
    """Byte-level BPE trained on WORDS: (its tokens, the 256 bytes first, then its merges' results; its merges)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [f"{word} {word}" for word in WORDS] + [f"{word.capitalize()} {word.capitalize()}" for word in WORDS]  # " word" too
    backend.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ", 1)) for pair in model["merges"]]
    return tokens, merges


def stand_in_tokenizer(name: str):
    """A `PreTrainedTokenizerFast` with the real vocabulary size and every special / added token of the
    published tokenizer at its real id (see the module docstring); bos, eos, pad, unk as published."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    published = _published(name)
    added = {int(i): entry for i, entry in published["added_tokens_decoder"].items()}
    raw = _raw_tokenizer_config(name)
    size = int(raw.get("vocab_size") or max(added) + 1)  # Qwen2's files give no size: its added tokens end it
    text_tokens, merges = _trained_bpe()
    free = [i for i in range(size) if i not in added]
    if len(free) < len(text_tokens):
        raise RuntimeError(f"{name}: {len(free)} free ids for {len(text_tokens)} BPE tokens")
    vocab = {entry["content"]: i for i, entry in added.items()}
    for i, token in zip(free, text_tokens):
        vocab[token] = i
    for i in free[len(text_tokens):]:
        vocab[f"<|stand-in-{i}|>"] = i  # never produced: no merge leads to it
    if len(vocab) != size:
        raise RuntimeError(f"{name}: the stand-in vocabulary has {len(vocab)} distinct tokens, expected {size}")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Registered as added tokens so text containing them splits them out whole; already in the
    # vocabulary, so they keep their ids.
    backend.add_special_tokens([AddedToken(added[i]["content"], special=bool(added[i].get("special", True)),
                                           normalized=False) for i in sorted(added)])
    roles = {key: published.get(key) for key in ("bos_token", "eos_token", "pad_token", "unk_token")}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        model_max_length=int(published.get("model_max_length") or raw.get("model_max_length") or 32768),
        clean_up_tokenization_spaces=bool(raw.get("clean_up_tokenization_spaces", False)),
        **{key: value for key, value in roles.items() if value is not None},
    )
    if published.get("additional_special_tokens"):
        tokenizer.add_special_tokens({"additional_special_tokens": list(published["additional_special_tokens"])})
    check_stand_in(name, tokenizer)
    return tokenizer


def check_stand_in(name: str, tokenizer: Any) -> None:
    """Raise unless `tokenizer` has the real size and every published special / added token at its id."""
    published = _published(name)
    raw = _raw_tokenizer_config(name)
    added = {int(i): entry["content"] for i, entry in published["added_tokens_decoder"].items()}
    size = int(raw.get("vocab_size") or max(added) + 1)
    if len(tokenizer) != size:
        raise RuntimeError(f"{name}: the stand-in tokenizer has {len(tokenizer)} tokens, the published one {size}")
    wrong = {token: tokenizer.convert_tokens_to_ids(token) for i, token in added.items()
             if tokenizer.convert_tokens_to_ids(token) != i}
    for token, i in (published.get("added_tokens.json") or {}).items():
        if tokenizer.convert_tokens_to_ids(token) != i:
            wrong[token] = tokenizer.convert_tokens_to_ids(token)
    if wrong:
        raise RuntimeError(f"{name}: tokens not at their published ids: {dict(list(wrong.items())[:5])}")
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if published.get(key) is not None and getattr(tokenizer, key) != published[key]:
            raise RuntimeError(f"{name}: {key} is {getattr(tokenizer, key)!r}, published {published[key]!r}")


# --- the folder ---------------------------------------------------------------------------------------

def write_processor_files(folder: Path, name: str) -> None:
    """Everything but the weights: the published config, processor settings, chat template and generation
    config, and the stand-in tokenizer."""
    source = source_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    stand_in_tokenizer(name).save_pretrained(folder)
    for file in PUBLISHED_FILES:
        if (source / file).is_file():
            shutil.copyfile(source / file, folder / file)  # after the tokenizer: its save must not replace them
    if (source / "raw" / "generation_config.json").is_file():
        shutil.copyfile(source / "raw" / "generation_config.json", folder / "generation_config.json")


def _meta_model(config: Any) -> torch.nn.Module:
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def _initial_value(name: str, shape: torch.Size, is_norm: bool, dtype: torch.dtype) -> torch.Tensor:
    if is_norm and name.endswith("weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    generator = torch.Generator().manual_seed(zlib.crc32(f"{SEED}:{name}".encode()))
    return (torch.randn(shape, generator=generator) * INIT_STD).to(dtype)


def write_weights(folder: Path, name: str) -> dict[str, Any]:
    """The seeded random weights of the model of `folder/config.json` (see the module docstring), shard by
    shard. Returns the number of parameters, the dtype and the files written."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    dtype = getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    model = _meta_model(config)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    norm_parameters = {f"{module_name}.{parameter_name}" if module_name else parameter_name
                       for module_name, module in model.named_modules() if "norm" in type(module).__name__.lower()
                       for parameter_name, _ in module.named_parameters(recurse=False)}
    tensors: list[tuple[str, torch.Size]] = []
    seen: set[int] = set()
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key not in parameters:
            raise RuntimeError(f"{name}: state dict entry {key} is a buffer; this builder only draws parameters")
        if id(tensor) in seen:  # a tied weight (Qwen2-VL's lm_head): saved once, as save_pretrained does
            continue
        seen.add(id(tensor))
        tensors.append((key, tensor.shape))
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, torch.Size]]] = [[]]
    shard_bytes = 0
    for key, shape in tensors:
        nbytes = shape.numel() * itemsize
        if shards[-1] and shard_bytes + nbytes > SHARD_BYTES:
            shards.append([])
            shard_bytes = 0
        shards[-1].append((key, shape))
        shard_bytes += nbytes
    files = (["model.safetensors"] if len(shards) == 1
             else [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)])
    weight_map = {}
    for file, shard in zip(files, shards):
        values = {key: _initial_value(key, shape, key in norm_parameters, dtype) for key, shape in shard}
        save_file(values, str(folder / file), metadata={"format": "pt"})
        weight_map.update({key: file for key in values})
        del values
    total_bytes = sum(shape.numel() for _, shape in tensors) * itemsize
    if len(files) > 1:
        index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return {"parameters": sum(shape.numel() for _, shape in tensors), "dtype": str(dtype).removeprefix("torch."),
            "bytes": total_bytes, "files": files}


@contextlib.contextmanager
def _locked(root: Path, name: str):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_complete(folder: Path, name: str) -> bool:
    """A folder this module finished, from the current published files and builder."""
    try:
        info = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return False
    return info.get("fingerprint") == fingerprint(name)


def build_real_model(name: str, cache_dir: Path | None = None) -> Path:
    """The folder of real-size model `name` ("smolvlm-256m" or "qwen2-vl-2b"), built if it is not in the
    cache yet (on 2 shared cores: SmolVLM 0.5 GB in ~12 s, Qwen2-VL 4.4 GB in ~40 s); else the cached one."""
    source_dir(name)  # a clear error before anything is written
    root = models_dir(cache_dir)
    target = root / name
    if is_complete(target, name):
        return target
    with _locked(root, name):
        if is_complete(target, name):  # built by another process while we waited
            return target
        for leftover in root.glob(f".{name}.tmp-*"):  # a build killed half-way
            shutil.rmtree(leftover, ignore_errors=True)
        started = time.perf_counter()
        building = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            write_processor_files(building, name)
            weights = write_weights(building, name)
            info = {"name": name, "source": REAL_MODELS[name], "fingerprint": fingerprint(name), "seed": SEED,
                    "init": f"norm weights 1, biases 0, others N(0, {INIT_STD}) seeded per tensor name",
                    "tokenizer": "stand-in: byte-level BPE over a word list, special/added tokens at their real ids",
                    "build_seconds": round(time.perf_counter() - started, 1), **weights}
            (building / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
            building.chmod(0o755)  # mkdtemp's 0700 (and safetensors' 0600): a cache other users may read
            for path in building.iterdir():
                path.chmod(0o644)
            if target.exists():  # stale: from other published files or an older builder
                stale = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-stale-", dir=root))
                target.rename(stale / name)
                shutil.rmtree(stale, ignore_errors=True)
            building.rename(target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return target


def real_processor(name: str) -> Any:
    """The processor of real-size model `name` (stand-in tokenizer, published image processor and chat
    template), built as `hi_core.model.loading` builds it from a folder; no weights. A second or two."""
    from transformers import AutoConfig

    from hi_core.model.loading import load_processor

    with tempfile.TemporaryDirectory(prefix=f"hi-real-processor-{name}-") as folder:
        write_processor_files(Path(folder), name)
        return load_processor(folder, AutoConfig.from_pretrained(folder))


def photo(width: int = 1024, height: int = 768, seed: int = 0):
    """A seeded photo-like image, (H, W, 3) uint8: a shaded red ball on textured grass under a sky; and the
    ball's (H, W) bool mask. What the real-size bench and browser test analyze."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    texture = sum(np.asarray(Image.fromarray(rng.normal(0, 1, (height // s, width // s)).astype(np.float32))
                             .resize((width, height), Image.Resampling.BICUBIC)) * (s / 32) for s in (4, 16, 64))
    horizon = height * 0.4 + 20 * np.sin(x / 90)
    sky = np.stack([110 + 60 * y / height, 160 + 40 * y / height, 235 - 10 * y / height], axis=-1)
    grass = np.stack([60 + 0 * y, 120 + 40 * (y - horizon) / height, 40 + 0 * y], axis=-1)
    pixels = np.where((y < horizon)[..., None], sky, grass) + 25 * texture[..., None]
    cy, cx, ry, rx = 0.62 * height, 0.45 * width, 130, 150
    mask = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    shade = np.clip(1.1 - 0.6 * np.sqrt(((y - cy + 50) / ry) ** 2 + ((x - cx + 50) / rx) ** 2), 0.3, 1.1)
    ball = np.stack([220 * shade, 30 * shade, 35 * shade], axis=-1) + 8 * texture[..., None]
    pixels = np.where(mask[..., None], ball, pixels)
    return np.clip(pixels, 0, 255).astype(np.uint8), mask
