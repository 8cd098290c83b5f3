"""Mesh files: binary glTF (GLB, embedded PNG texture), OBJ + MTL + PNG, stats JSON.

World units are metres and +Y is up, which is glTF's convention, so the GLB needs no root
transform. The GLB is written directly (a JSON chunk and one binary chunk): positions with
their bounds, unit normals, texture coordinates, indices, and a PBR material whose base
colour is the baked albedo (metallic 0, roughness 1, single-sided).
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamfusion import files

GENERATOR = "dreamfusion mesh-export"

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071


@dataclass
class TexturedMesh:
    positions: np.ndarray  # (V, 3) float32, metres, +Y up
    normals: np.ndarray  # (V, 3) float32 unit
    uv: np.ndarray  # (V, 2) float32, glTF convention (origin top-left)
    faces: np.ndarray  # (F, 3) int, counter-clockwise seen from outside
    texture: np.ndarray  # (T, T, 3) uint8, row 0 at the top


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def glb_bytes(mesh: TexturedMesh, name: str = "mesh", png: bytes | None = None) -> bytes:
    pos = np.ascontiguousarray(mesh.positions, dtype=np.float32)
    nrm = np.ascontiguousarray(mesh.normals, dtype=np.float32)
    nrm = nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)
    uv = np.ascontiguousarray(mesh.uv, dtype=np.float32)
    small = len(pos) < 65535
    idx = np.ascontiguousarray(mesh.faces, dtype=np.uint16 if small else np.uint32).reshape(-1)
    png = png if png is not None else png_bytes(mesh.texture)

    blob = bytearray()
    views = []

    def add_view(data: bytes, target: int | None) -> int:
        while len(blob) % 4:
            blob.append(0)
        view = {"buffer": 0, "byteOffset": len(blob), "byteLength": len(data)}
        if target is not None:
            view["target"] = target
        blob.extend(data)
        views.append(view)
        return len(views) - 1

    accessors = [
        {
            "bufferView": add_view(pos.tobytes(), ARRAY_BUFFER),
            "componentType": FLOAT,
            "count": len(pos),
            "type": "VEC3",
            "min": pos.min(0).tolist(),
            "max": pos.max(0).tolist(),
        },
        {
            "bufferView": add_view(nrm.tobytes(), ARRAY_BUFFER),
            "componentType": FLOAT,
            "count": len(nrm),
            "type": "VEC3",
        },
        {
            "bufferView": add_view(uv.tobytes(), ARRAY_BUFFER),
            "componentType": FLOAT,
            "count": len(uv),
            "type": "VEC2",
        },
        {
            "bufferView": add_view(idx.tobytes(), ELEMENT_ARRAY_BUFFER),
            "componentType": UNSIGNED_SHORT if small else UNSIGNED_INT,
            "count": int(idx.size),
            "type": "SCALAR",
        },
    ]
    image_view = add_view(png, None)
    while len(blob) % 4:
        blob.append(0)
    doc = {
        "asset": {"version": "2.0", "generator": GENERATOR},
        "scene": 0,
        "scenes": [{"name": name, "nodes": [0]}],
        "nodes": [{"name": name, "mesh": 0}],
        "meshes": [
            {
                "name": name,
                "primitives": [
                    {
                        "attributes": {"POSITION": 0, "NORMAL": 1, "TEXCOORD_0": 2},
                        "indices": 3,
                        "material": 0,
                        "mode": 4,
                    }
                ],
            }
        ],
        "materials": [
            {
                "name": "albedo",
                "pbrMetallicRoughness": {
                    "baseColorTexture": {"index": 0},
                    "metallicFactor": 0.0,
                    "roughnessFactor": 1.0,
                },
            }
        ],
        "textures": [{"sampler": 0, "source": 0}],
        "samplers": [
            {
                "magFilter": LINEAR,
                "minFilter": LINEAR_MIPMAP_LINEAR,
                "wrapS": CLAMP_TO_EDGE,
                "wrapT": CLAMP_TO_EDGE,
            }
        ],
        "images": [{"name": "albedo", "bufferView": image_view, "mimeType": "image/png"}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": len(blob)}],
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    total = 12 + 8 + len(js) + 8 + len(blob)
    out = bytearray(struct.pack("<4sII", b"glTF", 2, total))
    out += struct.pack("<I4s", len(js), b"JSON") + js
    out += struct.pack("<I4s", len(blob), b"BIN\x00") + blob
    return bytes(out)


def write_glb(mesh: TexturedMesh, path: str | Path, png: bytes | None = None) -> Path:
    path = Path(path)
    return files.write_bytes(path, glb_bytes(mesh, path.stem, png))


def write_obj(mesh: TexturedMesh, path: str | Path, png: bytes | None = None) -> list[Path]:
    """``name.obj`` + ``name.mtl`` + ``name.png`` side by side (OBJ's v axis points up)."""
    path = Path(path)
    mtl, tex = path.with_suffix(".mtl"), path.with_suffix(".png")
    files.write_bytes(tex, png if png is not None else png_bytes(mesh.texture))
    files.write_text(
        mtl, f"# {GENERATOR}\nnewmtl albedo\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {tex.name}\n"
    )
    uv = np.asarray(mesh.uv, dtype=np.float64).copy()
    uv[:, 1] = 1.0 - uv[:, 1]
    f = np.asarray(mesh.faces, dtype=np.int64) + 1
    with files.atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(f"# {GENERATOR}\nmtllib {mtl.name}\no {path.stem}\n")
        np.savetxt(fh, np.asarray(mesh.positions, dtype=np.float64), fmt="v %.6f %.6f %.6f")
        np.savetxt(fh, uv, fmt="vt %.6f %.6f")
        np.savetxt(fh, np.asarray(mesh.normals, dtype=np.float64), fmt="vn %.5f %.5f %.5f")
        fh.write("usemtl albedo\ns 1\n")
        np.savetxt(fh, np.repeat(f, 3, axis=1), fmt="f %d/%d/%d %d/%d/%d %d/%d/%d")
    return [path, mtl, tex]


def write_json(data: dict, path: str | Path) -> Path:
    return files.write_json(path, data)
