"""The route table: how Protocols compile, and how one table serves HTTP, spec and library."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

import pytest
from pydantic import BaseModel
from starlette.testclient import TestClient

from llama_post.errors import ConflictError
from llama_post.library_client import ApiProxy
from llama_post.openapi.generator import COMPAT_NOTE, build_spec
from llama_post.routes import Route, RouteError, all_routes, compile_routes
from llama_post.schema import StrictModel, webmethod
from llama_post.server.app import create_app


class EchoRequest(StrictModel):
    text: str
    times: int = 1


class Echoed(BaseModel):
    name: str
    text: str


class Echo(Protocol):
    @webmethod(route="/v1/echo/{name}", method="POST")
    @webmethod(route="/v1/legacy/echo/{name}", method="POST", compat="legacy")
    async def echo(self, name: str, request: EchoRequest) -> Echoed:
        """Say it back."""
        ...

    @webmethod(route="/v1/echo-stream", method="POST")
    async def echo_stream(self, request: EchoRequest) -> AsyncIterator[Echoed]:
        """Say it back, several times."""
        ...

    @webmethod(route="/v1/things/{thing_id:path}", method="GET")
    @webmethod(route="/v1/thing", method="GET", compat="legacy")
    @webmethod(route="/v1/thing/show", method="POST", compat="older")
    async def get_thing(self, thing_id: str) -> Echoed: ...

    @webmethod(route="/v1/things/{thing_id}/lock", method="POST")
    @webmethod(route="/v1/legacy/things/{thing_id}/lock", method="POST", compat="legacy")
    async def lock(self, thing_id: str) -> Echoed:
        """Lock a thing; it is always locked already."""
        ...


class InMemoryEcho:
    async def echo(self, name: str, request: EchoRequest) -> Echoed:
        return Echoed(name=name, text=request.text * request.times)

    async def echo_stream(self, request: EchoRequest) -> AsyncIterator[Echoed]:
        async def events() -> AsyncIterator[Echoed]:
            for i in range(request.times):
                yield Echoed(name=str(i), text=request.text)

        return events()

    async def get_thing(self, thing_id: str) -> Echoed:
        return Echoed(name=thing_id, text="")

    async def lock(self, thing_id: str) -> Echoed:
        raise ConflictError(f"{thing_id} is locked already", param="thing_id")


class EchoStack:
    def __init__(self) -> None:
        self.routes = compile_routes([("echo", Echo)])
        self.impl = InMemoryEcho()

    def call(self, route: Route) -> Any:
        return getattr(self.impl, route.name)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(EchoStack())) as c:
        yield c


def test_one_method_may_carry_several_routes(client: TestClient) -> None:
    routes = compile_routes([("echo", Echo)])
    assert [(r.method, r.path, r.primary) for r in routes if r.name == "echo"] == [
        ("POST", "/v1/echo/{name}", True),
        ("POST", "/v1/legacy/echo/{name}", False),
    ]
    for path in ["/v1/echo/a", "/v1/legacy/echo/a"]:
        assert client.post(path, json={"text": "hi", "times": 2}).json() == {
            "name": "a",
            "text": "hihi",
        }


def test_streams_are_server_sent_events(client: TestClient) -> None:
    with client.stream("POST", "/v1/echo-stream", json={"text": "x", "times": 3}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines == [f'data: {{"name":"{i}","text":"x"}}' for i in range(3)] + ["data: [DONE]"]


def test_path_ids_may_contain_slashes(client: TestClient) -> None:
    assert client.get("/v1/things/org/model-1").json()["name"] == "org/model-1"


def test_aliases_may_take_ids_from_the_query_or_the_body(client: TestClient) -> None:
    assert client.get("/v1/thing", params={"thing_id": "a/b"}).json()["name"] == "a/b"
    assert client.post("/v1/thing/show", json={"thing_id": "c"}).json()["name"] == "c"
    missing = client.get("/v1/thing")
    assert missing.status_code == 422 and missing.json()["error"]["param"] == "thing_id"
    extra = client.post("/v1/thing/show", json={"thing_id": "c", "other": 1})
    assert extra.status_code == 422 and extra.json()["error"]["param"] == "other"

    spec = build_spec(compile_routes([("echo", Echo)]))
    query = spec["paths"]["/v1/thing"]["get"]
    assert query["parameters"][0]["name"] == "thing_id" and query["tags"] == ["legacy"]
    body = spec["paths"]["/v1/thing/show"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["required"] == ["thing_id"]
    assert query["operationId"] == "get_thing_legacy"
    assert {"name": "legacy", "description": COMPAT_NOTE.format(family="legacy")} in spec["tags"]


def test_a_state_conflict_is_a_400_for_foreign_clients(client: TestClient) -> None:
    """Foreign SDKs (OpenAI's, llama-stack-client) retry a 409, so their routes answer 400."""
    native = client.post("/v1/things/x/lock")
    assert native.status_code == 409
    legacy = client.post("/v1/legacy/things/x/lock")
    assert legacy.status_code == 400
    assert legacy.json()["error"]["message"] == native.json()["error"]["message"]
    assert legacy.json()["error"]["param"] == "thing_id"


@pytest.mark.parametrize(
    ("agent", "done"),
    [
        ("OpenAI/Python 3.54.0", True),
        ("LlamaStackClient/Python 0.7.0", True),
        ("LlamaStackClient/Python 0.2.23", False),
        ("AsyncLlamaStackClient/Python 0.2.23", False),
        ("curl/8.0", True),
    ],
)
def test_streams_end_with_done_unless_the_client_cannot_parse_it(
    client: TestClient, agent: str, done: bool
) -> None:
    with client.stream(
        "POST", "/v1/echo-stream", json={"text": "x"}, headers={"user-agent": agent}
    ) as response:
        lines = [line for line in response.iter_lines() if line]
    assert (lines[-1] == "data: [DONE]") is done
    assert lines[0] == 'data: {"name":"0","text":"x"}'


def test_the_spec_and_library_come_from_the_same_table() -> None:
    stack = EchoStack()
    spec = build_spec(stack.routes)
    assert set(spec["paths"]) == {
        "/v1/echo/{name}",
        "/v1/legacy/echo/{name}",
        "/v1/echo-stream",
        "/v1/things/{thing_id}",
        "/v1/thing",
        "/v1/thing/show",
        "/v1/things/{thing_id}/lock",
        "/v1/legacy/things/{thing_id}/lock",
    }
    assert (
        "text/event-stream"
        in spec["paths"]["/v1/echo-stream"]["post"]["responses"]["200"]["content"]
    )

    import asyncio

    proxy = ApiProxy(stack, "echo")  # a duck-typed stack: a Dispatcher
    assert asyncio.run(proxy.echo("n", text="a", times=3)) == Echoed(name="n", text="aaa")
    assert asyncio.run(proxy.echo("n", EchoRequest(text="b"))) == Echoed(name="n", text="b")


def test_the_real_table_has_no_collisions_and_every_route_is_documented() -> None:
    routes = all_routes()
    assert len({(r.method, r.openapi_path) for r in routes}) == len(routes)
    assert all(r.summary for r in routes)


def test_bad_protocols_are_refused_when_compiled() -> None:
    class TwoBodies(Protocol):
        @webmethod(route="/v1/x", method="POST")
        async def x(self, a: EchoRequest, b: EchoRequest) -> Echoed: ...

    class PathMismatch(Protocol):
        @webmethod(route="/v1/x/{thing}", method="GET")
        async def x(self, other: str) -> Echoed: ...

    class NoModel(Protocol):
        @webmethod(route="/v1/x", method="GET")
        async def x(self) -> dict[str, str]: ...

    class Twice(Protocol):
        @webmethod(route="/v1/x", method="GET")
        async def x(self) -> Echoed: ...

        @webmethod(route="/v1/x", method="GET")
        async def y(self) -> Echoed: ...

    for bad, message in [
        (TwoBodies, "only one `request`"),
        (PathMismatch, "path parameter"),
        (NoModel, "must return"),
        (Twice, "declared by"),
    ]:
        with pytest.raises(RouteError, match=message):
            compile_routes([("bad", bad)])
