"""Uploaded datasets: unpack a .zip in the dataset format safely, and check where its records point.

For anything that accepts a dataset from someone else (the app's Dataset and Fine-tune tabs): every
member is checked before anything is written (relative paths inside the target, no `..`, no
absolute or drive paths, no symbolic links, at most MAX_ZIP_MEMBERS files and MAX_ZIP_BYTES
unpacked); files are only copied out, never run or unpickled.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from .datasets import INDEX, scan_dataset
from .errors import InputError

MAX_ZIP_BYTES = 1 << 30  # uncompressed, all members together
MAX_ZIP_MEMBERS = 20_000


def _safe_member_path(member: zipfile.ZipInfo) -> PurePosixPath:
    """The member's relative path; absolute names, `..` parts (zip slip) and links are refused."""
    name = member.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (len(name) > 1 and name[1] == ":"):
        raise InputError(f"the zip holds an unsafe path {member.filename!r} (absolute, or with '..'); nothing was extracted")
    if stat.S_ISLNK(member.external_attr >> 16):
        raise InputError(f"the zip holds a symbolic link {member.filename!r}; links are not accepted")
    return path


def extract_dataset_zip(archive: str | Path, into: Path) -> Path:
    """Unpack an uploaded dataset .zip into the empty folder `into`; returns the dataset folder (the one
    with data.jsonl: `into` itself, or its one top folder). Every member is checked before anything
    is written (paths inside `into`, no links, at most MAX_ZIP_MEMBERS members and MAX_ZIP_BYTES
    uncompressed); files are only copied out, never run or unpickled. Bad archives are `InputError`s."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [m for m in bundle.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
            if len(members) > MAX_ZIP_MEMBERS:
                raise InputError(f"the zip holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted")
            size = sum(m.file_size for m in members)
            if size > MAX_ZIP_BYTES:
                raise InputError(f"the zip unpacks to {size / 2**20:.1f} MiB; at most {MAX_ZIP_BYTES / 2**20:.1f} MiB are accepted")
            paths = [_safe_member_path(m) for m in members]
            for member, path in zip(members, paths):
                target = into.joinpath(*path.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile stops each member at its declared size (checked above) and checks its CRC
                with bundle.open(member) as source, open(target, "wb") as sink:
                    shutil.copyfileobj(source, sink)
    except zipfile.BadZipFile as error:
        raise InputError(f"the upload is not a readable zip file ({error})") from None
    except RuntimeError as error:  # an encrypted member
        raise InputError(f"the zip cannot be read: {error}") from None
    if (into / INDEX).is_file():
        return into
    found = sorted(into.glob(f"*/{INDEX}"))
    if len(found) != 1:
        where = f" (found {', '.join(str(f.relative_to(into)) for f in found)})" if found else ""
        raise InputError(f"the zip has no {INDEX} at its root or in one top folder{where}: it is not a dataset in the HI format")
    return found[0].parent


def check_record_paths(folder: Path) -> None:
    """Refuse an uploaded data.jsonl whose image or mask paths lead out of the dataset folder (an
    absolute path or `..`), which would show the server's own files in the page. Only the records
    a reader would open are checked (`scan_dataset`: malformed lines and duplicates are skipped
    records, never opened); line numbers are the file's own."""
    root = folder.resolve()

    def inside(value: str) -> bool:
        try:
            return (root / value).resolve().is_relative_to(root)
        except (OSError, ValueError):  # e.g. a NUL character
            return False

    for line in scan_dataset(folder):
        if line.problem is not None:
            continue  # read_dataset reports it as a skipped record, without opening any file
        for key in ("image", "mask"):
            value = line.fields[key]
            if not inside(value):
                raise InputError(f"{INDEX} line {line.number}: {key} {value!r} is not a path inside the dataset")
