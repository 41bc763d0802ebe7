from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from llama_post.auth import CAPABILITY_ROUTES
from llama_post.openapi.writer import HTML_NAME, SPEC_NAME, generated_files
from llama_post.routes import all_routes
from tests.support import Server

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi"


def test_the_committed_spec_is_what_the_code_generates() -> None:
    for name, text in generated_files().items():
        committed = (DOCS / name).read_text(encoding="utf-8")
        assert committed == text, f"docs/openapi/{name} is stale: run `llama-post openapi`"


def test_the_spec_is_valid_openapi() -> None:
    spec = yaml.safe_load((DOCS / SPEC_NAME).read_text(encoding="utf-8"))
    validate(spec)
    operations = {(m.upper(), p) for p, ms in spec["paths"].items() for m in ms}
    assert operations == {(r.method, r.openapi_path) for r in all_routes()}


def test_the_spec_says_which_routes_need_a_key_and_what_each_can_answer() -> None:
    """Keys as the server takes them (`AuthMiddleware`), on every route but the open ones;
    401 and 403 where a key is needed, 404 where an id is taken, 409 where a create is named by
    its request, 413 where a body is, each with the error envelope (LLM Engine's own shape on
    its routes)."""
    spec = yaml.safe_load((DOCS / SPEC_NAME).read_text(encoding="utf-8"))
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == schemes["bearer"] | {"type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["basic"] == schemes["basic"] | {"type": "http", "scheme": "basic"}
    for code in ("401", "403", "404", "409", "413"):
        schema = spec["components"]["responses"][f"Error{code}"]["content"]["application/json"]
        assert schema == {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
    assert "www-authenticate" in map(
        str.lower, spec["components"]["responses"]["Error401"]["headers"]
    )

    open_paths = ("/v1/health", "/v1/version", "/api/v1/healthz")
    signed = CAPABILITY_ROUTES  # checkpoint archives and files, export downloads
    for route in all_routes():
        op = spec["paths"][route.openapi_path][route.method.lower()]
        answers = set(op["responses"])
        where = (route.method, route.openapi_path)
        if route.openapi_path in open_paths or route.openapi_path.startswith(signed):
            assert "security" not in op and not answers & {"401", "403"}, where
        else:
            assert op["security"] == [{"bearer": []}, {"apiKey": []}, {"basic": []}], where
            assert {"401", "403"} <= answers, where
            assert op["responses"]["401"] == {"$ref": "#/components/responses/Error401"}
        if route.path_params or route.carried_params:
            assert "404" in answers, where
        if route.request_kind in ("json", "multipart"):
            assert "413" in answers, where
        if route.name in ("register_dataset", "register_model", "supervised_fine_tune"):
            assert "409" in answers, where
        if route.name in ("health", "list_models", "list_datasets", "upload_file"):
            assert not answers & {"404", "409"}, where
        family = "Detail" if route.compat == "llm-engine" else ""
        if "404" in answers:
            assert op["responses"]["404"] == {"$ref": f"#/components/responses/{family}Error404"}


def test_links_lead_from_every_create_to_what_reads_uses_or_deletes_it() -> None:
    spec = yaml.safe_load((DOCS / SPEC_NAME).read_text(encoding="utf-8"))
    operations = {op["operationId"]: op for ms in spec["paths"].values() for op in ms.values()}
    creators = [r for r in all_routes() if r.creates]
    assert {r.name for r in creators} >= {
        "upload_file",
        "register_dataset",
        "register_model",
        "supervised_fine_tune",
        "preference_optimize",
        "create_fine_tuning_job",
    }
    for route in creators:
        links = operations[route.operation_id]["responses"]["200"]["links"]
        for name, pointer in route.creates:
            users = [  # those whose every path parameter the create's answer gives
                r
                for r in all_routes()
                if r.api == route.api
                and r.operation_id != route.operation_id  # a nested create: not itself
                and name in (*r.path_params, *r.carried_params)
                and set(r.path_params) <= {n for n, _ in route.creates}
            ]
            assert users, (route.operation_id, name)
            for user in users:
                link = links[user.operation_id]
                assert link["operationId"] == user.operation_id
                expression = f"$response.body#{pointer}"
                assert expression in [
                    *link.get("parameters", {}).values(),
                    *link.get("requestBody", {}).values(),
                ], link
        lists = [n for n in links if n.startswith("list") and "parameters" not in links[n]]
        assert lists, f"{route.operation_id} links to no list"


def test_the_html_reference_names_every_operation() -> None:
    html = (DOCS / HTML_NAME).read_text(encoding="utf-8")
    for route in all_routes():
        assert f'id="{route.operation_id}"' in html
        assert f"<code>{route.openapi_path}</code>" in html


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    out = tmp_path_factory.mktemp("client")
    bin_dir = str(Path(sys.executable).parent)
    subprocess.run(
        [
            str(Path(bin_dir) / "openapi-python-client"),
            "generate",
            "--path",
            str(DOCS / SPEC_NAME),
            "--meta",
            "none",
            "--output-path",
            str(out / "lp_client"),
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")},
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("lp_client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "lp_client" or m.startswith("lp_client.")]:
            del sys.modules[name]


def test_a_generated_client_drives_the_server(generated_client: ModuleType, server: Server) -> None:
    def use(name: str) -> Any:
        return importlib.import_module(f"lp_client.{name}")

    models, types = use("models"), use("types")
    upload, register = use("api.files.upload_file"), use("api.datasets.register_dataset")
    iterrows = use("api.datasets.iterrows")
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(7)]
    content = "".join(json.dumps(r) + "\n" for r in rows).encode()

    with use("client").Client(base_url=server.url, raise_on_unexpected_status=True) as client:
        file = upload.sync(
            client=client,
            body=models.UploadFileRequest(
                file=types.File(payload=BytesIO(content), file_name="rows.jsonl"),
                purpose=models.FilePurpose.FINE_TUNE,
            ),
        )
        assert isinstance(file, models.FileObject) and file.bytes_ == len(content)

        dataset = register.sync(
            client=client,
            body=models.RegisterDatasetRequest(
                purpose=models.DatasetPurpose.INSTRUCT,
                source=models.FileDataSource(type_="file", file_id=file.id),
            ),
        )
        assert isinstance(dataset, models.Dataset) and dataset.row_count == 7

        seen: list[dict[str, Any]] = []
        start = 0
        while True:
            page = iterrows.sync(dataset.identifier, client=client, start_index=start, limit=3)
            assert isinstance(page, models.IterRowsResponse)
            seen += [item.to_dict() for item in page.data]
            if not page.has_more:
                break
            start = page.next_start_index
        assert seen == rows

        missing = use("api.datasets.get_dataset").sync("no-such-dataset", client=client)
        assert isinstance(missing, models.ErrorResponse)
        assert missing.error.type_ == "not_found_error"


def test_compatibility_routes_stay_out_of_the_native_client(generated_client: ModuleType) -> None:
    """A generated client groups operations by tag: the native modules hold no alias."""
    import pkgutil

    def modules(tag: str) -> set[str]:
        package = importlib.import_module(f"lp_client.api.{tag}")
        return {m.name for m in pkgutil.iter_modules(package.__path__)}

    native = modules("post_training")
    assert {"supervised_fine_tune", "get_job_status", "cancel_job"} <= native
    assert not [name for name in native if "llama_stack" in name or "fine_tuning" in name]
    assert "get_job_status_llama_stack_v0_2" in modules("llama_stack_v0_2")
    assert "cancel_job_llama_stack_v0_7" in modules("llama_stack_v0_7")
    assert "create_fine_tuning_job" in modules("openai_fine_tuning")
    assert "register_dataset_llama_stack_v0_7" not in modules("datasets")
