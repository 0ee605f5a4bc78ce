#!/usr/bin/env python3
"""Write proto/triton/model_config.proto, Triton's schema of config.pbtxt, from PyPI.

Triton Inference Server's `model_config.proto` (package `inference`, message `ModelConfig`)
is the schema that src/model/triton.rs parses config.pbtxt with. The `tritonclient` wheel
ships it compiled, as the serialized FileDescriptorProto inside
`tritonclient/grpc/model_config_pb2.py`; this script reads that descriptor back and prints it
as .proto text (field names, numbers, types, nesting, oneofs and maps; Triton's comments are
not in the descriptor, so they are not in the output), under the licence notice of the wheel
(LICENSE.txt, BSD-3-Clause). It then compiles the written file with protoc (grpcio-tools) and
checks that the result is the wheel's descriptor, so the .proto cannot drift from it.

Rerun (Python 3.11; protobuf and grpcio-tools as pinned in scripts/requirements-dev.txt):
    python3 -m venv /tmp/triton-schema
    /tmp/triton-schema/bin/pip install protobuf==7.36.2 grpcio-tools==1.85.1
    /tmp/triton-schema/bin/python scripts/make_triton_schema.py [--version 2.73.0] [--wheel W]

It downloads the wheel with `pip download --no-deps tritonclient==VERSION` unless --wheel
names one already downloaded. To follow a newer Triton, raise TRITONCLIENT below, rerun, and
read the diff of proto/triton/model_config.proto.
"""

import argparse
import ast
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from google.protobuf import descriptor_pb2

TRITONCLIENT = "2.73.0"
PB2 = "tritonclient/grpc/model_config_pb2.py"
OUT = Path(__file__).resolve().parent.parent / "proto" / "triton" / "model_config.proto"

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    F.TYPE_DOUBLE: "double",
    F.TYPE_FLOAT: "float",
    F.TYPE_INT64: "int64",
    F.TYPE_UINT64: "uint64",
    F.TYPE_INT32: "int32",
    F.TYPE_FIXED64: "fixed64",
    F.TYPE_FIXED32: "fixed32",
    F.TYPE_BOOL: "bool",
    F.TYPE_STRING: "string",
    F.TYPE_BYTES: "bytes",
    F.TYPE_UINT32: "uint32",
    F.TYPE_SFIXED32: "sfixed32",
    F.TYPE_SFIXED64: "sfixed64",
    F.TYPE_SINT32: "sint32",
    F.TYPE_SINT64: "sint64",
}


def download(version: str, into: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
         f"tritonclient=={version}", "-d", str(into)],
        check=True,
    )
    (wheel,) = into.glob("tritonclient-*.whl")
    return wheel


def read_wheel(wheel: Path) -> tuple[descriptor_pb2.FileDescriptorProto, str]:
    """The descriptor model_config_pb2.py registers, and the wheel's licence text."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(PB2).decode()
        (licence,) = [n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE.txt")
                      or n.endswith(".dist-info/LICENSE.txt")]
        licence = z.read(licence).decode()
    # The generated module calls `...AddSerializedFile(b'...')` once; take its bytes literal
    # from the syntax tree rather than importing the module (which would check its protobuf
    # runtime version against ours).
    serialized = [
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", None) == "AddSerializedFile"
    ]
    if len(serialized) != 1:
        sys.exit(f"{PB2}: expected one AddSerializedFile call, found {len(serialized)}")
    return descriptor_pb2.FileDescriptorProto.FromString(serialized[0]), licence


class Printer:
    def __init__(self, file: descriptor_pb2.FileDescriptorProto):
        self.file = file
        self.lines: list[str] = []
        # Map entry messages by full name, to print their fields as `map<K, V>`.
        self.map_entries: dict[str, descriptor_pb2.DescriptorProto] = {}

        def collect(prefix, messages):
            for m in messages:
                name = f"{prefix}.{m.name}"
                if m.options.map_entry:
                    self.map_entries[name] = m
                collect(name, m.nested_type)

        collect(f".{file.package}", file.message_type)

    def emit(self, depth: int, text: str) -> None:
        self.lines.append("  " * depth + text)

    def type_name(self, field) -> str:
        if field.type in SCALARS:
            return SCALARS[field.type]
        prefix = f".{self.file.package}."
        assert field.type_name.startswith(prefix), field.type_name
        return field.type_name[len(prefix):]

    def field(self, depth: int, field, in_oneof: bool) -> None:
        for option in field.options.ListFields():
            sys.exit(f"field {field.name}: option {option[0].name} is not printed")
        entry = self.map_entries.get(field.type_name)
        if entry is not None:
            key, value = entry.field
            text = f"map<{self.type_name(key)}, {self.type_name(value)}> {field.name}"
        else:
            label = ""
            if field.label == F.LABEL_REPEATED:
                label = "repeated "
            elif field.proto3_optional:
                label = "optional "
            elif not in_oneof and self.file.syntax != "proto3":
                label = "required " if field.label == F.LABEL_REQUIRED else "optional "
            text = f"{label}{self.type_name(field)} {field.name}"
        self.emit(depth, f"{text} = {field.number};")

    def enum(self, depth: int, enum) -> None:
        for option in enum.options.ListFields():
            sys.exit(f"enum {enum.name}: option {option[0].name} is not printed")
        self.emit(depth, f"enum {enum.name} {{")
        for value in enum.value:
            self.emit(depth + 1, f"{value.name} = {value.number};")
        self.emit(depth, "}")

    def message(self, depth: int, message) -> None:
        for option in message.options.ListFields():
            sys.exit(f"message {message.name}: option {option[0].name} is not printed")
        if message.reserved_range or message.reserved_name or message.extension_range:
            sys.exit(f"message {message.name}: reserved or extension ranges are not printed")
        self.emit(depth, f"message {message.name} {{")
        for enum in message.enum_type:
            self.enum(depth + 1, enum)
        for nested in message.nested_type:
            if not nested.options.map_entry:
                self.message(depth + 1, nested)
        open_oneof = None
        for field in message.field:
            real_oneof = field.HasField("oneof_index") and not field.proto3_optional
            oneof = field.oneof_index if real_oneof else None
            if oneof != open_oneof:
                if open_oneof is not None:
                    self.emit(depth + 1, "}")
                if oneof is not None:
                    self.emit(depth + 1, f"oneof {message.oneof_decl[oneof].name} {{")
                open_oneof = oneof
            self.field(depth + 1 + (oneof is not None), field, oneof is not None)
        if open_oneof is not None:
            self.emit(depth + 1, "}")
        self.emit(depth, "}")

    def print(self, licence: str, version: str) -> str:
        file = self.file
        if file.dependency or file.service or file.extension or file.options.ListFields():
            sys.exit(f"{file.name}: imports, services, extensions or options are not printed")
        for line in licence.strip().splitlines():
            self.emit(0, "// " + line.removeprefix("#").removeprefix(" ") if line != "#" else "//")
        self.emit(0, "")
        self.emit(0, f"// Triton Inference Server's {file.name}: the schema of config.pbtxt.")
        self.emit(0, f"// Generated by scripts/make_triton_schema.py from the descriptor that the")
        self.emit(0, f"// tritonclient {version} wheel ships in {PB2}; the notice above is")
        self.emit(0, "// that wheel's LICENSE.txt. Triton's comments are not in the descriptor.")
        self.emit(0, "// Do not edit: rerun the script.")
        self.emit(0, "")
        self.emit(0, f'syntax = "{file.syntax or "proto2"}";')
        self.emit(0, "")
        self.emit(0, f"package {file.package};")
        for enum in file.enum_type:
            self.emit(0, "")
            self.enum(0, enum)
        for message in file.message_type:
            self.emit(0, "")
            self.message(0, message)
        return "\n".join(self.lines).replace(" \n", "\n") + "\n"


def check(written: Path, expected: descriptor_pb2.FileDescriptorProto) -> None:
    """Compile the written .proto and compare it with the wheel's descriptor."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.bin"
        code = protoc.main(["protoc", f"-I{written.parent}", f"--descriptor_set_out={out}",
                            str(written)])
        if code != 0:
            sys.exit(f"protoc failed on {written}")
        (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file

    def normalise(file):
        file = descriptor_pb2.FileDescriptorProto.FromString(file.SerializeToString())
        file.name = expected.name

        def clear(messages):
            for m in messages:
                for f in m.field:
                    f.ClearField("json_name")
                clear(m.nested_type)

        clear(file.message_type)
        return file

    if normalise(compiled) != normalise(expected):
        sys.exit(f"{written} does not compile to the wheel's descriptor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--version", default=TRITONCLIENT, help="tritonclient version")
    parser.add_argument("--wheel", type=Path, help="an already downloaded tritonclient wheel")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel or download(args.version, Path(tmp))
        descriptor, licence = read_wheel(wheel)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(Printer(descriptor).print(licence, args.version))
    check(OUT, descriptor)
    print(f"wrote {OUT.relative_to(OUT.parent.parent.parent)}: compiles to the wheel's descriptor")


if __name__ == "__main__":
    main()
