"""An output folder is one run: written atomically, finished by metrics.json, never mixed with
another run, and nothing written outside it.

    run = open_run("runs/latest", "python -m dcn_numba.train", settings, resume=False, overwrite=False)
    ...                                              # load the data, check sizes: before any write
    run.write_json("history.json", history)          # any file: a temporary name, then a rename
    net.save(run.file("regular.npz"))                # a path inside the run, for a writer of its own
    run.finish(metrics)                              # metrics.json, last

A run folder holds:

    run.json        written first: the command and the settings that define the run's results
    ...             the run's files, each written to a temporary name beside it (`.NAME.*.tmp`)
                    and renamed into place, so a reader sees the old file or the whole new one
    metrics.json    written last: its presence marks a finished run

`open_run` decides what the folder may become, before any work:

* missing, or empty: a new run starts there;
* holds a run (run.json): refused, naming it as finished or unfinished, unless `resume` (the same
  command and settings: the run continues from its checkpoint, or, finished, is read back) or
  `overwrite` (the old run is deleted when the new one writes its first file);
* holds anything else, or a symbolic link anywhere inside: refused whatever the flags, so that
  nothing a run did not write is deleted or written through.

Overwrite survives a kill at any point. It writes the journal `.overwrite` (atomically), moves
metrics.json, then every other entry, then run.json into `.trash/`, deletes `.trash/` and removes
the journal. Whoever opens a folder whose journal exists first finishes that work: the user asked
for the old run to go. So the folder holds the old run whole, or what is left of it with no
metrics.json and the journal beside it, or the new run: never files of two runs side by side.
A temporary file a kill left behind is deleted when the folder is next opened.

Every problem with a path is an `OutputError` whose message names the option (`--out`, `--table`)
and the path; the commands print it as a usage error.
"""

import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

MARKER = "run.json"
METRICS = "metrics.json"
JOURNAL = ".overwrite"
TRASH = ".trash"
TEMPORARY_SUFFIX = ".tmp"


class OutputError(Exception):
    """A path a command was given cannot hold its outputs; the message names the option."""


# ---------------------------------------------------------------------------------------------
# Single files, written atomically
# ---------------------------------------------------------------------------------------------


def is_temporary(name):
    """Whether `name` is one of `write_atomically`'s temporary files (.NAME.random.tmp)."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


def write_atomically(path, write):
    """Call write(file) on a new binary file beside `path`, flush it to disk, then rename it onto
    `path`; returns what write returned. A reader sees the old file or the whole new one, and a
    kill leaves at most a temporary file. The temporary name is created exclusively, so it never
    follows a link."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")
    file = open(temporary, "xb")  # made here (never an existing file or link), with the usual permissions
    try:
        with file:
            result = write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # an error, or Ctrl-C, even one that lands just after the rename
        temporary.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)
    return result


def sync_folder(folder):
    """Flush a folder's entries to disk, so that a rename survives a power cut too."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def finite_or_none(value):
    """`value` with every non-finite float replaced by None: JSON has no NaN or Infinity."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_bytes(data, indent=2):
    """`data` as strict JSON (NaN and Infinity as null), UTF-8."""
    return json.dumps(finite_or_none(data), indent=indent, allow_nan=False).encode()


def check_output_file(path, option):
    """`path` as a Path, once it is sure that a file can be written there: not empty, not a
    folder, its folder made (if missing) and writable. Call it before any work."""
    if not str(path):
        raise OutputError(f"{option} needs a file name, got an empty string")
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path} is a folder, expected a file name")
    make_folder(path.parent, f"{option} {path}")
    return path


def make_folder(folder, what):
    """Make `folder` (and its parents) and check that files can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{what}: {first_file_on_path(folder)} is a file, expected a folder") from None
    except OSError as error:
        raise OutputError(f"{what}: cannot create the folder {folder} ({error.strerror})") from None
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(f"{what}: cannot write in {folder} ({error.strerror})") from None


def first_file_on_path(folder):
    """The first component of `folder` (from the root down) that exists and is not a folder."""
    for part in reversed([folder, *folder.parents]):
        if part.exists() and not part.is_dir():
            return part
    return folder


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------


class Run:
    """One run in its folder, as `open_run` found it: paths inside it, atomic writes, the finish.

    Attributes: folder (Path), option (the command's name for it), command and settings (the
    run's identity), resumed (True when open_run continued a run found there), finished
    (metrics.json is there). Nothing is written until `start` (which the first write calls):
    then an old run being overwritten is deleted and run.json written."""

    def __init__(self, folder, option, command, settings, resumed, replaces):
        self.folder, self.option = folder, option
        self.command, self.settings, self.resumed = command, settings, resumed
        self.started, self.replaces = resumed, replaces

    @property
    def finished(self):
        """Whether this run is finished: its metrics.json is there (not the one of a run it replaces)."""
        return not self.replaces and (self.folder / METRICS).is_file()

    def start(self):
        """Delete the run this one replaces, if any, and write run.json; once."""
        if self.started:
            return
        if self.replaces:
            clear(self.folder)
            self.replaces = False
        identity = dict(command=self.command, settings=self.settings)
        write_atomically(self.folder / MARKER, lambda file: file.write(json_bytes(identity)))
        self.started = True

    def file(self, name):
        """The path of `name` (a relative path) inside the run, its folders made. Refused: a name
        that leaves the folder, and a path through a symbolic link."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise OutputError(f"{self.option} {self.folder}: {name} leaves the folder; a run writes only "
                              "inside its folder")
        path = self.folder
        for part in relative.parts:
            path = path / part
            if path.is_symlink():
                raise OutputError(f"{self.option} {self.folder}: {path} is a symbolic link; a run writes "
                                  "only inside its folder, never through a link")
        self.start()
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write(self, name, write):
        """write(file) into the run's file `name`, atomically (`write_atomically`)."""
        write_atomically(self.file(name), write)

    def write_json(self, name, data, indent=2):
        self.write(name, lambda file: file.write(json_bytes(data, indent)))

    def read_json(self, name):
        return json.loads((self.folder / name).read_text())

    def finish(self, metrics, leftovers=()):
        """Write metrics.json, the mark of a finished run, then delete `leftovers` (names of
        files the finished run no longer needs, such as its checkpoint)."""
        self.write_json(METRICS, metrics)
        for name in leftovers:
            (self.folder / name).unlink(missing_ok=True)

    def metrics(self):
        """The metrics of a finished run."""
        return self.read_json(METRICS)


def open_run(folder, command, settings, resume=False, overwrite=False, option="--out"):
    """The Run that `folder` holds or will hold (module docstring); refuses with an OutputError
    naming `option`. It writes nothing of the run (`Run.start` does): call it before any work.
    `settings` (JSON-able) is what a resumed run must share."""
    folder = check_output_folder(folder, option)
    finish_overwrite(folder)
    for entry in folder.iterdir():
        if is_temporary(entry.name):
            entry.unlink()
    entries = sorted(entry.name for entry in folder.iterdir())
    identity = json.loads(json_bytes(dict(command=command, settings=settings)))
    if entries and MARKER not in entries:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise OutputError(f"{option} {folder} holds files that no run wrote ({shown}); choose an empty "
                          "or new folder (nothing there is deleted or overwritten)")
    refuse_links(folder, option)
    if entries and resume:
        check_same_run(folder, identity, option)
    elif entries and not overwrite:
        state = ("a finished run; pass --resume to read it back" if METRICS in entries
                 else "an unfinished run; pass --resume to continue it")
        raise OutputError(f"{option} {folder} holds {state} or --overwrite to replace it")
    return Run(folder, option, command, identity["settings"], resumed=bool(entries) and resume,
               replaces=bool(entries) and not resume)


def check_output_folder(folder, option):
    """`folder` as a Path, once it is sure that files can be written there: a name given, not a
    file nor below one, made (if missing), writable."""
    if not str(folder):
        raise OutputError(f"{option} needs a folder name, got an empty string")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option} {folder} is a file, expected a folder")
    make_folder(folder, f"{option} {folder}")
    return folder


def check_same_run(folder, identity, option):
    """A run may be resumed only by the command and settings that started it."""
    try:
        stored = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError) as error:
        raise OutputError(f"{option} {folder}: its {MARKER} cannot be read ({error}); pass --overwrite "
                          "to replace the run") from None
    stored_settings = stored.get("settings", {})
    if stored.get("command") != identity["command"]:
        raise OutputError(f"--resume: {option} {folder} holds a run of {stored.get('command')}, not of "
                          f"{identity['command']}")
    differences = [f"{key} {stored_settings.get(key)!r} (now {value!r})"
                   for key, value in identity["settings"].items() if stored_settings.get(key) != value]
    differences += [f"{key} {value!r} (now unset)" for key, value in stored_settings.items()
                    if key not in identity["settings"]]
    if differences:
        raise OutputError(f"--resume: the run in {option} {folder} was made with " + ", ".join(differences)
                          + "; resume it with its own settings, or pass --overwrite to replace it")


def refuse_links(folder, option):
    """Refuse a run folder with a symbolic link anywhere inside: writing through it could reach
    outside the folder. (Clearing a folder never follows one: a rename and shutil.rmtree act on
    the link itself.)"""
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            if Path(root, name).is_symlink():
                raise OutputError(f"{option} {folder}: {Path(root, name)} is a symbolic link; a run "
                                  "folder holds only the run's own files (remove the link, or choose "
                                  "another folder)")


def clear(folder):
    """Delete the run in `folder`, surviving a kill at any point (module docstring)."""
    write_atomically(folder / JOURNAL, lambda file: file.write(b"overwriting the run in this folder\n"))
    finish_overwrite(folder)


def finish_overwrite(folder):
    """Finish an overwrite that a journal announces: metrics.json first, every other entry, then
    run.json into the trash; delete the trash; remove the journal. Does nothing without one."""
    if not (folder / JOURNAL).is_file():
        return
    trash = folder / TRASH
    trash.mkdir(exist_ok=True)
    names = [entry.name for entry in folder.iterdir() if entry.name not in (JOURNAL, TRASH)]
    for name in sorted(names, key=lambda name: (name != METRICS, name == MARKER)):
        os.replace(folder / name, trash / name)
    sync_folder(folder)
    shutil.rmtree(trash)
    (folder / JOURNAL).unlink()
    sync_folder(folder)
