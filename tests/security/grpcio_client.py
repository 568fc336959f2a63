"""An independent gRPC client for the interop tests: the official ``grpcio`` package, with
stubs generated here from ``proto/`` by grpcio-tools' protoc.  It imports nothing from
nuraft_mesg.

Usage: ``python grpcio_client.py PLAN.json`` where the plan is::

    {"target": "localhost:1234", "proto_dir": ".../proto", "out_dir": ".../gen",
     "tls": {"root": "ca.pem", "cert": "client.pem", "key": "client.key"} | null,
     "calls": [{"method": "RaftStep" | "DataCall" | "Status" | "Raw",
                "request": {...protobuf JSON...} | "raw": "<hex>", "path": "/x/y",
                "metadata": [["authorization", "Bearer x"]], "timeout": 5,
                "compression": "gzip" | null}, ...]}

It prints one JSON object per call: ``{"code": "OK", "details": "...", "response": {...}}``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any


def generate(proto_dir: str, out_dir: str) -> None:
    from grpc_tools import protoc

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.name) for p in Path(proto_dir).glob("*.proto"))
    args = ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            *protos]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {args}")


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    generate(plan["proto_dir"], plan["out_dir"])
    sys.path.insert(0, plan["out_dir"])
    import grpc  # type: ignore[import-untyped]
    from google.protobuf import json_format

    ms = importlib.import_module("messaging_service_pb2")
    ms_grpc = importlib.import_module("messaging_service_pb2_grpc")
    ds = importlib.import_module("data_service_pb2")
    ds_grpc = importlib.import_module("data_service_pb2_grpc")
    ad = importlib.import_module("admin_pb2")
    ad_grpc = importlib.import_module("admin_pb2_grpc")

    tls = plan.get("tls")
    if tls:
        def read(key: str) -> bytes | None:
            return Path(tls[key]).read_bytes() if tls.get(key) else None

        creds = grpc.ssl_channel_credentials(read("root"), read("key"), read("cert"))
        channel = grpc.secure_channel(plan["target"], creds)
    else:
        channel = grpc.insecure_channel(plan["target"])

    stubs = {
        "RaftStep": (ms_grpc.MessagingStub(channel).RaftStep, ms.RaftGroupMsg),
        "DataCall": (ds_grpc.DataServiceStub(channel).Call, ds.DataServiceRequest),
        "Status": (ad_grpc.AdminStub(channel).Status, ad.StatusRequest),
    }
    results: list[dict[str, Any]] = []
    for call in plan["calls"]:
        kwargs: dict[str, Any] = {"timeout": call.get("timeout", 5),
                                  "metadata": [tuple(m) for m in call.get("metadata", [])]}
        if call.get("compression") == "gzip":
            kwargs["compression"] = grpc.Compression.Gzip
        try:
            if call["method"] == "Raw":
                method = channel.unary_unary(call["path"], request_serializer=None,
                                             response_deserializer=None)
                reply = method(bytes.fromhex(call["raw"]), **kwargs)
                response: Any = {"raw": reply.hex()}
            else:
                stub, request_type = stubs[call["method"]]
                request = json_format.ParseDict(call["request"], request_type())
                reply = stub(request, **kwargs)
                response = json_format.MessageToDict(reply, preserving_proto_field_name=True)
            results.append({"code": "OK", "details": "", "response": response})
        except grpc.RpcError as exc:
            results.append({"code": exc.code().name, "details": exc.details() or "",
                            "response": None})
    channel.close()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
