"""Reading YAML files (study files, sweep spaces, cluster configs, the report's paper figures): a missing file or
a syntax error is one line."""
from __future__ import annotations

from pathlib import Path

from locas.errors import LocasError


def read_yaml(path, what: str):
    """The file's YAML data (None for an empty file); `what` names the file in errors (e.g. "--space x.yaml")."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise LocasError(f"{what}: file not found ({path})")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LocasError(f"{what}: not valid YAML ({' '.join(str(e).split())})") from None
