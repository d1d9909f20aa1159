"""A protoc plugin (`protoc-gen-grpc_python`) for `buf generate`: gRPC's Python generator
lives inside grpcio-tools' bundled protoc (`--grpc_python_out`), and no standalone plugin
binary ships with it, so this one hands the request's files to that protoc and answers
with what it wrote.

Reads a `CodeGeneratorRequest` on stdin, writes a `CodeGeneratorResponse` on stdout (the
plugin protocol); buf.gen.yaml runs it as `python scripts/protoc_gen_grpc_python.py`.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc  # type: ignore[import-untyped]  # grpcio-tools ships no types


def generate(request: plugin_pb2.CodeGeneratorRequest) -> plugin_pb2.CodeGeneratorResponse:
    """Run grpc_tools' protoc over the request's descriptors (no .proto file is read)."""
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as tmp:
        descriptors = Path(tmp) / "descriptors.binpb"
        descriptors.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = Path(tmp) / "out"
        out.mkdir()
        target = f"{request.parameter}:{out}" if request.parameter else str(out)
        argv = [
            "protoc",
            f"--descriptor_set_in={descriptors}",
            f"--grpc_python_out={target}",
            *request.file_to_generate,
        ]
        if protoc.main(argv) != 0:
            response.error = "grpc_tools.protoc --grpc_python_out failed (its stderr says why)"
            return response
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            response.file.add(name=path.relative_to(out).as_posix(), content=path.read_text())
    return response


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    sys.stdout.buffer.write(generate(request).SerializeToString())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
