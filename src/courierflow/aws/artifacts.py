"""What deploy ships, built from the installed package or a source checkout: the SAM
template with its layer's S3 location, the courierflow wheel, and the EC2 files; and the
digest that names each build's keys, so new code means new keys."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from courierflow.errors import DeployError

#: a source checkout's root, when courierflow runs from one
ROOT = Path(__file__).resolve().parents[3]
#: the SAM template and the EC2 files, shipped inside the package (deploy works from an
#: installed wheel as from a source checkout)
INFRA = Path(__file__).resolve().parents[1] / "infra"
TEMPLATE = INFRA / "template.yaml"
BOOTSTRAP = INFRA / "ec2" / "bootstrap.sh"
#: the layer path in the template, replaced by the uploaded zip's S3 URI
LOCAL_LAYER = "ContentUri: ../layer_contents.zip"
#: key prefix of every artifact in the artifacts bucket; each build goes under a folder
#: named by the digest of its contents, so new code means new keys and a changed template
#: (the same key would leave CloudFormation nothing to update)
ARTIFACT_PREFIX = "courierflow/"
#: hex digits of the content digest in artifact keys
DIGEST_CHARS = 16


def content_digest(paths: Iterable[Path]) -> str:
    """A digest of what the files hold, not of how they were packed: a zip's members are
    read by name and bytes (a rebuilt wheel has new timestamps but the same digest)."""
    digest = hashlib.sha256()
    for path in paths:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in sorted(archive.namelist()):
                    digest.update(name.encode() + b"\0" + archive.read(name) + b"\0")
        else:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:DIGEST_CHARS]


def template_body(layer_uri: str) -> str:
    """The SAM template with the layer pointing at the uploaded zip."""
    text = TEMPLATE.read_text()
    if LOCAL_LAYER not in text:
        raise DeployError(f"{TEMPLATE} no longer has {LOCAL_LAYER!r}; update deploy.py")
    return text.replace(LOCAL_LAYER, f"ContentUri: {layer_uri}")


def manager_artifacts(tmp: Path, say: Callable[[str], None]) -> list[Path]:
    """The courierflow wheel, bootstrap.sh and the unit file the EC2 user data fetches."""
    say("building the courierflow wheel for the EC2 manager ...")
    if (ROOT / "pyproject.toml").is_file() and (ROOT / "src" / "courierflow").is_dir():
        try:  # a source checkout: the wheel of its code
            subprocess.run(
                [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp),
                 str(ROOT)],
                check=True,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise DeployError(f"could not build the courierflow wheel: {exc}") from None
        wheel = next(tmp.glob("courierflow-*.whl"))
    else:  # installed from a wheel: the same files, packed again
        wheel = wheel_from_installed(tmp)
    return [wheel, BOOTSTRAP, BOOTSTRAP.parent / "courierflow-manager.service"]


#: files of an installed distribution that are the installer's, not the wheel's
_INSTALLER_FILES = ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")


def wheel_from_installed(out_dir: Path, name: str = "courierflow") -> Path:
    """The wheel of the installed distribution ``name``, packed from the files its RECORD
    lists (the package, its data and its .dist-info; not scripts, caches or what the
    installer added), with a new RECORD. For a deploy from an installed wheel, where no
    source tree exists to build one from."""
    dist = importlib.metadata.distribution(name)
    version = dist.version
    base = Path(str(dist.locate_file("")))
    members: list[tuple[str, bytes]] = []
    for entry in dist.files or []:
        path = str(entry)
        parts = Path(path).parts
        if (path.startswith("..") or "__pycache__" in parts or path.endswith(".pyc")
                or (".dist-info" in parts[0] and parts[-1] in _INSTALLER_FILES)):  # fmt: skip
            continue
        members.append((path, (base / path).read_bytes()))
    if not members:
        raise DeployError(f"the installed {name} lists no files to pack into a wheel")
    info = f"{name}-{version}.dist-info"
    record = [f"{path},sha256={_b64_digest(data)},{len(data)}" for path, data in members]
    record.append(f"{info}/RECORD,,")
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in members:
            archive.writestr(path, data)
        archive.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


def _b64_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
