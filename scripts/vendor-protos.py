#!/usr/bin/env python3
"""Vendors the third-party .proto files build.rs compiles into reflection descriptor sets.

    python3 scripts/vendor-protos.py

Rewrites proto/third_party/ from two published packages, at pinned versions:

- Envoy's `envoy/service/auth/v3/external_auth.proto` and every file it imports, transitively,
  from the .proto sources shipped inside the envoy-types crate at the version in Cargo.lock
  (located with `cargo metadata`, which downloads the crate if it is not cached). These are the
  exact files envoy-types generated its Rust types from, so what reflection describes matches
  what the server decodes. (The PyPI `xds-protos` wheel ships only generated Python, no .proto.)
- `google/rpc/error_details.proto` from the PyPI wheel `googleapis-common-protos`
  (fetched with `pip download`).

google/protobuf/*.proto are not copied: protox has the well-known types built in.
Files are copied byte for byte, keeping their import paths. Needs cargo, python3 and pip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "proto/third_party"

ENVOY_CRATE = "envoy-types"
ENVOY_ROOT = "envoy/service/auth/v3/external_auth.proto"
# envoy-types keeps one directory per upstream repository under proto/; the import roots.
ENVOY_INCLUDE = [
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
    "ratelimit",
]

GOOGLEAPIS_WHEEL = "googleapis-common-protos"
GOOGLEAPIS_VERSION = "1.76.0"
GOOGLEAPIS_FILES = ["google/rpc/error_details.proto"]

WELL_KNOWN = "google/protobuf/"
IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def crate_dir(name: str) -> tuple[str, Path]:
    """The locked version of a dependency and the directory of its unpacked sources."""
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--locked"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    found = [p for p in meta["packages"] if p["name"] == name]
    if len(found) != 1:
        sys.exit(f"vendor-protos: expected one {name} in Cargo.lock, found {len(found)}")
    return found[0]["version"], Path(found[0]["manifest_path"]).parent


def resolve(include: list[Path], name: str) -> Path:
    for root in include:
        if (root / name).is_file():
            return root / name
    sys.exit(f"vendor-protos: {name} not found under {', '.join(map(str, include))}")


def closure(include: list[Path], root: str) -> dict[str, Path]:
    """`root` and everything it imports, transitively, except the well-known types."""
    files: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        if name in files or name.startswith(WELL_KNOWN):
            continue
        files[name] = resolve(include, name)
        todo.extend(IMPORT.findall(files[name].read_text()))
    return files


def googleapis_files(scratch: Path) -> dict[str, Path]:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
         "--dest", str(scratch), f"{GOOGLEAPIS_WHEEL}=={GOOGLEAPIS_VERSION}"],
        check=True,
    )
    (wheel,) = scratch.glob("googleapis_common_protos-*.whl")
    unpacked = scratch / "googleapis"
    zipfile.ZipFile(wheel).extractall(unpacked)
    files: dict[str, Path] = {}
    for name in GOOGLEAPIS_FILES:
        files.update(closure([unpacked], name))
    (licence,) = unpacked.glob("*.dist-info/licenses/LICENSE")
    files["LICENSE.googleapis-common-protos"] = licence
    return files


def main() -> None:
    version, crate = crate_dir(ENVOY_CRATE)
    envoy = closure([crate / "proto" / d for d in ENVOY_INCLUDE], ENVOY_ROOT)
    envoy[f"LICENSE.{ENVOY_CRATE}"] = crate / "LICENSE"
    with tempfile.TemporaryDirectory() as scratch:
        google = googleapis_files(Path(scratch))
        shared = envoy.keys() & google.keys()
        clash = sorted(n for n in shared if envoy[n].read_bytes() != google[n].read_bytes())
        if clash:
            sys.exit(f"vendor-protos: the two sources disagree on {', '.join(clash)}")
        readme = OUT / "README.md"
        kept = readme.read_text() if readme.exists() else None
        shutil.rmtree(OUT, ignore_errors=True)
        for name, source in sorted({**envoy, **google}.items()):
            (OUT / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, OUT / name)
        if kept is not None:
            readme.write_text(kept)
    protos = sorted(n for n in {**envoy, **google} if n.endswith(".proto"))
    print(f"vendor-protos: {len(protos)} files from {ENVOY_CRATE} {version} and "
          f"{GOOGLEAPIS_WHEEL} {GOOGLEAPIS_VERSION} into {OUT.relative_to(REPO)}/")
    for name in protos:
        print(f"  {name}")


if __name__ == "__main__":
    main()
