"""Uploaded datasets: unpack a .zip in the dataset format safely, and check where its records point.

For anything that accepts a dataset from someone else (the app's Dataset and Fine-tune tabs): every
member is checked before anything is written (relative paths inside the target, no `..`, no
absolute or drive paths, no symbolic links, no member that names no file (`.`), no name a file
system refuses (a part over `MAX_NAME_BYTES`), no path that is both a file and a folder, at most
MAX_ZIP_MEMBERS files and MAX_ZIP_BYTES unpacked, and what the caller's storage budget allows);
files are only copied out, never run or unpickled. While writing, the bytes actually written are
counted against what the headers declared, so a zip whose headers lie cannot write more than was
allowed; an archive that fails leaves nothing behind.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..base.errors import InputError
from .datasets import INDEX, Stop, scan_dataset

MAX_ZIP_BYTES = 1 << 30  # uncompressed, all members together
MAX_ZIP_MEMBERS = 20_000
MAX_NAME_BYTES = 255  # one file or folder name (NAME_MAX of Linux and macOS file systems)
MAX_PATH_CHARS = 1024  # a member's whole path
_COPY_BLOCK = 1 << 20


def _safe_member_path(member: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; absolute names, `..` parts (zip slip), links, names of no file
    (`.`, `./`) and names a file system cannot hold are refused."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise InputError(
            f"the zip holds an unsafe path {member.filename!r} (absolute, or with '..'); nothing was extracted"
        )
    if stat.S_ISLNK(member.external_attr >> 16):
        raise InputError(f"the zip holds a symbolic link {member.filename!r}; links are not accepted")
    if not path.parts:
        raise InputError(
            f"the zip holds a member named {member.filename!r}, which names no file or folder; nothing was extracted"
        )
    long = next((part for part in path.parts if len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES), None)
    if long is not None:
        raise InputError(
            f"the zip holds a name of {len(long)} characters ({long[:40]!r}...); file and folder names "
            f"of at most {MAX_NAME_BYTES} bytes are accepted"
        )
    if len(name) > MAX_PATH_CHARS:
        raise InputError(
            f"the zip holds a path of {len(name)} characters ({name[:40]!r}...); at most {MAX_PATH_CHARS} are accepted"
        )
    return path


def _check_members(bundle: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The files to write with their checked paths (folders and macOS's `__MACOSX/` metadata left out)."""
    entries = [m for m in bundle.infolist() if not m.filename.startswith("__MACOSX/")]
    if not entries:
        raise InputError("the zip is empty: a dataset zip holds data.jsonl with its images and masks")
    paths = [_safe_member_path(m) for m in entries]
    files = [(m, path) for m, path in zip(entries, paths) if not m.is_dir()]
    if len(files) > MAX_ZIP_MEMBERS:
        raise InputError(f"the zip holds {len(files)} files; at most {MAX_ZIP_MEMBERS} are accepted")
    folders = {parent for _, path in files for parent in path.parents} | {
        path for m, path in zip(entries, paths) if m.is_dir()
    }
    clash = next((path for _, path in files if path in folders), None)
    if clash is not None:
        raise InputError(f"the zip holds {str(clash)!r} both as a file and as a folder; nothing was extracted")
    return files


def extract_dataset_zip(archive: str | Path, into: Path, reserve: Callable[[int], None] | None = None) -> Path:
    """Unpack an uploaded dataset .zip into the empty folder `into`; returns the dataset folder (the one
    with data.jsonl: `into` itself, or its one top folder). Every member is checked before anything
    is written (see the module); `reserve(bytes)`, when given, is told the unpacked size the headers
    declare before anything is written, and refuses it by raising InputError (a server's storage
    budget). No more than that is written: a member that unpacks to more than declared stops the
    extraction. Bad archives are `InputError`s, and leave `into` removed."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            files = _check_members(bundle)
            size = sum(m.file_size for m, _ in files)
            if size > MAX_ZIP_BYTES:
                raise InputError(
                    f"the zip unpacks to {size / 2**20:.1f} MiB; at most {MAX_ZIP_BYTES / 2**20:.1f} MiB are accepted"
                )
            if reserve is not None:
                reserve(size)
            written = 0
            for member, path in files:
                target = into.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile also stops each member at its declared size and checks its CRC
                with bundle.open(member) as source, open(target, "wb") as sink:
                    while block := source.read(_COPY_BLOCK):
                        written += len(block)
                        if written > size:
                            raise InputError(
                                f"the zip unpacks to more than its headers declare ({size / 2**20:.1f} MiB); "
                                "nothing was kept"
                            )
                        sink.write(block)
    except BaseException as error:
        shutil.rmtree(into, ignore_errors=True)
        if isinstance(error, zipfile.BadZipFile | zlib.error | EOFError):
            raise InputError(f"the upload is not a readable zip file ({error})") from None
        if isinstance(error, RuntimeError | NotImplementedError):  # an encrypted member, an unknown compression
            raise InputError(f"the zip cannot be read: {error}") from None
        if isinstance(error, OSError):  # e.g. the disk is full: the server's problem, said in one line
            raise InputError(f"the zip could not be unpacked ({error.strerror or type(error).__name__})") from None
        raise
    if (into / INDEX).is_file():
        return into
    found = sorted(into.glob(f"*/{INDEX}"))
    if len(found) != 1:
        where = f" (found {', '.join(str(f.relative_to(into)) for f in found)})" if found else ""
        raise InputError(
            f"the zip has no {INDEX} at its root or in one top folder{where}: it is not a dataset in the HI format"
        )
    return found[0].parent


def check_record_paths(folder: Path, stop: Stop | None = None) -> None:
    """Refuse an uploaded data.jsonl whose image or mask paths lead out of the dataset folder (an
    absolute path or `..`), which would show the server's own files in the page. Only the records
    a reader would open are checked (`scan_dataset`: malformed lines and duplicates are skipped
    records, never opened); line numbers are the file's own. `stop`: `Cancelled` once it says so."""
    root = folder.resolve()

    def inside(value: str) -> bool:
        try:
            return (root / value).resolve().is_relative_to(root)
        except (OSError, ValueError):  # e.g. a NUL character
            return False

    for line in scan_dataset(folder, stop=stop):
        if line.problem is not None:
            continue  # read_dataset reports it as a skipped record, without opening any file
        for key in ("image", "mask"):
            value = line.fields[key]
            if not inside(value):
                raise InputError(f"{INDEX} line {line.number}: {key} {value!r} is not a path inside the dataset")
