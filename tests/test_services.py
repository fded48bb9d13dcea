"""HTTP services as data: saved and versioned, invoked as ``effect: service.operation``
against a real local HTTP server; retries only for 5xx and connection errors; input and
output schemas; save-time checks; hostile schemas; the CLI."""

from __future__ import annotations

import copy
import json
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from statem import DefinitionError, Engine
from statem.cli import main
from statem.http_service import join_url
from statem.services import ServiceNotFound
from statem.testing import run_until_idle

from .helpers import http_server

OP: dict[str, Any] = {
    "method": "POST",
    "path": "'/shipments/' + input['order']",
    "input_schema": {
        "type": "object",
        "required": ["order"],
        "properties": {"order": {"type": "string"}, "items": {"type": "integer"}},
    },
    "output_schema": {
        "type": "object",
        "required": ["tracking"],
        "properties": {"tracking": {"type": "string"}, "eta": {"type": "string"}},
    },
}


def service(version: int = 1, **op: Any) -> dict[str, Any]:
    """shipping: one operation, create-shipment, with retries of 3 attempts and no wait."""
    operation = {**copy.deepcopy(OP), **op}
    return {
        "id": "shipping",
        "version": version,
        "base_url": "env['shipping_url']",
        "headers": {"Authorization": "'Bearer ' + env['token']"},
        "timeout_seconds": 5,
        "retry": {"max_attempts": 3, "initial_seconds": 0},
        "operations": {"create-shipment": operation},
    }


def shipper(success: str = "output['tracking']", input: str = "{'order': ctx['order']}") -> dict[str, Any]:
    return {
        "id": "ship",
        "version": 1,
        "start_at": "go",
        "context": {"order": "input.get('order', 'R1')"},
        "states": {
            "go": {
                "always": [
                    {
                        "name": "book",
                        "invoke": {
                            "effect": "shipping.create-shipment",
                            "input": input,
                            "success": {"state": "done", "context": {"tracking": success}},
                            "error": {"state": "broken", "context": {"why": "output"}},
                        },
                    }
                ]
            },
            "done": {"end": True, "return": "ctx['tracking']"},
            "broken": {"end": True},
        },
    }


def engine_for(db_url: str, base: str) -> Engine:
    return Engine(db_url, env={"shipping_url": f"{base}/api/v1", "token": "s3cret"})


def run(engine: Engine, order: str = "R1") -> Any:
    ex = engine.start("ship", {"order": order})
    run_until_idle(engine)
    return engine.get(ex.id)


def refused_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- calls


def test_a_service_operation_is_called_as_declared(db_url: str) -> None:
    with http_server(lambda path, body, headers: (201, {"tracking": f"TRK-{body['order']}"})) as (
        base,
        calls,
    ):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
            history = engine.history(ex.id)
        finally:
            engine.close()
    assert (ex.state, ex.status, ex.output) == ("done", "finished", "TRK-R1")
    assert len(calls) == 1
    call = calls[0]
    assert (call["method"], call["path"], call["json"]) == ("POST", "/shipments/R1", {"order": "R1"})
    assert call["headers"]["Authorization"] == "Bearer s3cret"
    assert call["headers"]["Idempotency-Key"].startswith(f"{ex.id}:")
    invoke = next(s for s in history if s.kind == "invoke")
    assert invoke.output == {"invoke": "shipping.create-shipment", "input": {"order": "R1"}}


def test_a_4xx_answer_takes_the_error_branch_without_retrying(db_url: str) -> None:
    with http_server(lambda path, body, headers: (422, {"error": "no such address"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
            retries = [s for s in engine.history(ex.id) if s.kind == "retry"]
        finally:
            engine.close()
    assert ex.state == "broken"
    why = ex.context["why"]
    assert (why["type"], why["status"], why["json"]) == ("HTTPError", 422, {"error": "no such address"})
    assert "shipping.create-shipment v1: POST" in why["message"] and "HTTP 422" in why["message"]
    assert len(calls) == 1 and retries == []


def test_a_5xx_answer_is_retried_with_the_same_idempotency_key(db_url: str) -> None:
    answers = iter([(503, {"error": "warming up"}), (502, "bad gateway"), (201, {"tracking": "T-9"})])
    with http_server(lambda path, body, headers: next(answers)) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
            retries = [s for s in engine.history(ex.id) if s.kind == "retry"]
        finally:
            engine.close()
    assert (ex.state, ex.output) == ("done", "T-9")
    assert len(calls) == 3
    assert len({c["headers"]["Idempotency-Key"] for c in calls}) == 1
    assert [r.error.split(":")[0] for r in retries if r.error] == ["HTTPError", "HTTPError"]


def test_5xx_past_the_retries_ends_in_the_error_branch(db_url: str) -> None:
    with http_server(lambda path, body, headers: (500, {"error": "boom"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
        finally:
            engine.close()
    assert ex.state == "broken"
    assert (ex.context["why"]["type"], ex.context["why"]["status"]) == ("HTTPError", 500)
    assert len(calls) == 3


def test_connection_errors_are_retried(db_url: str) -> None:
    engine = Engine(db_url, env={"shipping_url": f"http://127.0.0.1:{refused_port()}", "token": "t"})
    try:
        engine.save_service(service())
        engine.save_machine(shipper())
        ex = run(engine)
        retries = [s for s in engine.history(ex.id) if s.kind == "retry"]
    finally:
        engine.close()
    assert ex.state == "broken"
    assert ex.context["why"]["type"] == "ConnectError"
    assert len(retries) == 2


def test_an_output_that_fails_its_schema_is_an_output_error_not_retried(db_url: str) -> None:
    with http_server(lambda path, body, headers: (200, {"trackingNumber": "T"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
        finally:
            engine.close()
    assert ex.state == "broken"
    why = ex.context["why"]
    assert why["type"] == "OutputError" and "'tracking' is a required property" in why["message"]
    assert len(calls) == 1


def test_a_body_that_is_not_json_is_an_output_error(db_url: str) -> None:
    with http_server(lambda path, body, headers: (200, "<html>hello</html>")) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
        finally:
            engine.close()
    assert ex.context["why"]["type"] == "OutputError"
    assert "not JSON" in ex.context["why"]["message"]
    assert len(calls) == 1


def test_an_oversized_response_is_an_output_error(db_url: str) -> None:
    with http_server(lambda path, body, headers: (200, {"tracking": "x" * 1_500_000})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper())
            ex = run(engine)
        finally:
            engine.close()
    assert ex.context["why"]["type"] == "OutputError"
    assert "the response is over 1000000 bytes" in ex.context["why"]["message"]
    assert len(calls) == 1


def test_an_input_that_fails_its_schema_is_never_sent(db_url: str) -> None:
    with http_server(lambda path, body, headers: (201, {"tracking": "T"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(shipper(input="{'order': ctx['order'], 'items': 'many'}"))
            ex = run(engine)
        finally:
            engine.close()
    why = ex.context["why"]
    assert (ex.state, why["type"], why["field"]) == ("broken", "InputError", "input.items")
    assert calls == []


def test_ok_body_and_relative_paths(db_url: str) -> None:
    op = {
        "method": "put",
        "path": "'labels/' + input['order']",
        "body": "{'ref': input['order'], 'kind': 'label'}",
        "ok": "status == 202 and json['queued']",
        "output_schema": {"type": "object", "properties": {"queued": {"type": "boolean"}}},
    }
    defn = service(**op)
    del defn["operations"]["create-shipment"]["input_schema"]
    with http_server(lambda path, body, headers: (202, {"queued": True})) as (base, calls):
        engine = Engine(db_url, env={"shipping_url": f"{base}/api/v1/", "token": "t"})
        try:
            engine.save_service(defn)
            engine.save_machine(shipper(success="output['queued']"))
            ex = run(engine, "R7")
        finally:
            engine.close()
    assert ex.output is True
    assert (calls[0]["method"], calls[0]["path"]) == ("PUT", "/api/v1/labels/R7")
    assert calls[0]["json"] == {"ref": "R7", "kind": "label"}


def test_urls_join_as_urls_do() -> None:
    assert join_url("http://h/api/v1", "/shipments/1", "x") == "http://h/shipments/1"
    assert join_url("http://h/api/v1/", "shipments/1", "x") == "http://h/api/v1/shipments/1"
    assert join_url("http://h/api/v1", "shipments", "x") == "http://h/api/shipments"
    assert join_url("https://h/a", "", "x") == "https://h/a"
    with pytest.raises(ValueError, match="path must be relative to base_url"):
        join_url("http://h/api", "//evil.example/x", "x")
    with pytest.raises(ValueError, match="path must be relative to base_url"):
        join_url("http://h/api", "http://evil.example/x", "x")
    with pytest.raises(ValueError, match="base_url must be an http"):
        join_url("file:///etc/passwd", "", "x")


def test_the_version_is_the_latest_when_the_task_is_armed(db_url: str) -> None:
    from statem.testing import FakeClock

    clock = FakeClock()
    answers = iter([(503, {}), (201, {"tracking": "A1"}), (201, {"tracking": "B"})])
    with http_server(lambda path, body, headers: (lambda s, b: (s, {**b, "path": path}))(*next(answers))) as (
        base,
        calls,
    ):
        engine = Engine(db_url, env={"shipping_url": base, "token": "t"}, clock=clock)
        try:
            engine.save_service(service(1))
            engine.save_machine(shipper())
            clock.advance(1)
            first = engine.start("ship", {"order": "A"})  # armed now: v1
            clock.advance(1)
            engine.save_service(service(2, path="'/v2/shipments/' + input['order']"))
            clock.advance(1)
            assert engine.run_once(limit=1) == 1  # A's first attempt: 503, retried (no wait)
            second = engine.start("ship", {"order": "B"})  # armed after v2 was saved
            run_until_idle(engine)
            outputs = engine.get(first.id).output, engine.get(second.id).output
        finally:
            engine.close()
    assert [c["path"] for c in calls] == ["/shipments/A", "/shipments/A", "/v2/shipments/B"]
    assert outputs == ("A1", "B")  # the retry of A kept v1


def test_an_invoke_retry_overrides_the_service_default(db_url: str) -> None:
    machine = shipper()
    machine["states"]["go"]["always"][0]["invoke"]["retry"] = {"max_attempts": 1}
    with http_server(lambda path, body, headers: (503, {"error": "busy"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.save_service(service())
            engine.save_machine(machine)
            ex = run(engine)
        finally:
            engine.close()
    assert (ex.state, ex.context["why"]["status"]) == ("broken", 503)
    assert len(calls) == 1  # the service's default would allow 3


def test_a_registered_effect_of_the_exact_name_wins(db_url: str) -> None:
    engine = Engine(db_url)
    try:
        engine.save_service(service())
        engine.effects.register(
            "shipping.create-shipment", lambda input, *, idempotency_key: {"tracking": "local"}
        )
        engine.save_machine(shipper())
        ex = run(engine)
    finally:
        engine.close()
    assert ex.output == "local"


def test_one_http_client_per_engine_with_a_transport_seam(db_url: str) -> None:
    seen: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(str(request.url))
            return super().handle_request(request)

    with http_server(lambda path, body, headers: (201, {"tracking": "T"})) as (base, calls):
        engine = engine_for(db_url, base)
        try:
            engine.effects.use_transport(Counting())
            client = engine.effects.http
            engine.save_service(service())
            engine.save_machine(shipper())
            run(engine, "A")
            run(engine, "B")
            assert engine.effects.http is client  # one client, reused
        finally:
            engine.close()
    assert seen == [f"{base}/shipments/A", f"{base}/shipments/B"]
    assert len(calls) == 2


# --------------------------------------------------------------------------- saving


def test_services_are_versioned_and_immutable(engine: Engine) -> None:
    first = engine.save_service(service(1))
    assert engine.save_service(service(1)) == first  # same content: a no-op
    changed = service(1, method="PUT")
    with pytest.raises(DefinitionError, match=r"service 'shipping': version: version 1 is already saved"):
        engine.save_service(changed)
    engine.save_service(service(2, method="PUT"))
    assert engine.get_service("shipping").version == 2
    assert engine.get_service("shipping", 1).operations["create-shipment"].method == "POST"
    infos = engine.services()
    assert [(s.id, s.version, s.operations) for s in infos] == [
        ("shipping", 1, ["create-shipment"]),
        ("shipping", 2, ["create-shipment"]),
    ]
    with pytest.raises(ServiceNotFound, match="no service 'billing' is saved"):
        engine.get_service("billing")
    with pytest.raises(ServiceNotFound, match="service 'shipping' has no version 9"):
        engine.get_service("shipping", 9)


def test_save_services_is_all_or_nothing(engine: Engine) -> None:
    other = service(1)
    other["id"] = "billing"
    with pytest.raises(DefinitionError):
        engine.catalog.save([other, {**service(1), "operations": {}}])
    assert engine.services() == []


def test_a_service_from_a_yaml_file(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "shipping.yaml"
    path.write_text(
        "id: shipping\nversion: 1\nbase_url: \"env['shipping_url']\"\n"
        "operations:\n  track:\n    method: GET\n    path: \"'/track/' + input['id']\"\n",
        encoding="utf-8",
    )
    svc = engine.save_service(path)
    assert svc.operations["track"].method == "GET"
    assert svc.timeout_seconds == 30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_schema": {"$ref": "https://evil.example/schema.json"}}, "only local references"),
        (
            {"output_schema": {"type": "object", "properties": {"a": {"$ref": "http://x/y#/a"}}}},
            r"output_schema.properties.a.\$ref: only local references",
        ),
        ({"input_schema": {"type": "string", "pattern": "a" * 5000}}, "pattern is 5000 characters"),
        ({"input_schema": {"type": "string", "pattern": "^(a+)+$"}}, "repeats a repetition"),
        ({"input_schema": {"patternProperties": {"(x*)*y": {}}}}, "repeats a repetition"),
        ({"input_schema": {"enum": ["x" * 1000] * 100}}, "bytes of JSON; the limit is"),
        ({"input_schema": {"type": "strnig"}}, "not a valid JSON Schema"),
        ({"path": "ctx['order']"}, "can read only input, env, not ctx"),
        ({"ok": "output['status'] == 200"}, "can read only input, env, status, headers, json, not output"),
        ({"path": "input["}, "expression does not parse"),
        ({"verb": "POST"}, "operations.create-shipment.verb: unknown key"),
        ({"method": "BREW"}, "operations.create-shipment.method"),
    ],
)
def test_hostile_or_broken_definitions_are_refused(
    engine: Engine, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        engine.save_service(service(**change))
    assert engine.services() == []


def test_a_remote_reference_is_never_fetched(engine: Engine) -> None:
    # even if a $ref slipped past the check, the validator's registry refuses to retrieve it
    from statem.schemas import REGISTRY

    with pytest.raises(Exception, match="evil"):
        REGISTRY.get_or_retrieve("https://evil.example/schema.json")


# --------------------------------------------------------------------------- save-time checks of machines


def test_a_typo_in_an_output_chain_is_caught_at_save(engine: Engine) -> None:
    engine.save_service(service())
    with pytest.raises(DefinitionError) as err:
        engine.save_machine(shipper(success="output['trackng']"))
    text = str(err.value)
    assert "machine 'ship': states.go.always[0].invoke.success.context.tracking" in text
    assert (
        "'trackng' is not in the output schema of shipping.create-shipment v1; did you mean 'tracking'?"
        in text
    )
    assert engine.machines() == []


def test_input_keys_are_checked_at_save(engine: Engine) -> None:
    engine.save_service(service())
    with pytest.raises(DefinitionError, match="required key 'order' is missing from the input of shipping"):
        engine.save_machine(shipper(input="{'ordr': ctx['order']}"))
    closed = service()
    closed["operations"]["create-shipment"]["input_schema"]["additionalProperties"] = False
    engine.save_service({**closed, "version": 2})
    with pytest.raises(
        DefinitionError, match=r"key 'itmes' is not in the input schema.*did you mean 'items'"
    ):
        engine.save_machine(shipper(input="{'order': ctx['order'], 'itmes': 2}"))


def test_an_unknown_operation_is_caught_at_save(engine: Engine) -> None:
    engine.save_service(service())
    machine = shipper()
    machine["states"]["go"]["always"][0]["invoke"]["effect"] = "shipping.create-shipmnt"
    with pytest.raises(
        DefinitionError, match="has no operation 'create-shipmnt'; did you mean 'create-shipment'"
    ):
        engine.save_machine(machine)


def test_error_branches_may_read_the_http_error(engine: Engine) -> None:
    engine.save_service(service())
    machine = shipper()
    machine["states"]["go"]["always"][0]["invoke"]["error"]["context"] = {"why": "output['json']['x']"}
    engine.save_machine(machine)
    machine = {**shipper(), "version": 2}
    machine["states"]["go"]["always"][0]["invoke"]["error"]["context"] = {"why": "output['stauts']"}
    with pytest.raises(DefinitionError, match="did you mean 'status'"):
        engine.save_machine(machine)


def test_a_service_not_saved_yet_is_an_error_only_in_strict_mode(db_url: str) -> None:
    lax = Engine(db_url)
    try:
        lax.save_machine(shipper())  # the service may be saved later
    finally:
        lax.close()
    strict = Engine(db_url, strict_effects=True)
    try:
        machine = {**shipper(), "version": 2}
        with pytest.raises(DefinitionError, match="no service 'shipping' is saved; register it with"):
            strict.save_machine(machine)
        strict.save_service(service())
        strict.save_machine(machine)
    finally:
        strict.close()


# --------------------------------------------------------------------------- CLI


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_services_load_list_show(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "shipping.json"
    good.write_text(json.dumps(service(1)), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**service(1), "id": "billing", "base_url": "ctx['x']"}), encoding="utf-8")

    code, out, err = cli(capsys, "--db", db_url, "services", "load", str(good), str(bad))
    assert code == 1
    assert "bad.json: service 'billing': base_url: a service expression can read only input, env" in err
    assert "nothing stored (1 of 2 files invalid)" in err

    code, out, err = cli(capsys, "--db", db_url, "services", "load", str(good))
    assert (code, out.strip(), err) == (0, "saved service shipping v1", "")

    code, out, _ = cli(capsys, "--db", db_url, "--json", "services", "list")
    listed = json.loads(out)
    assert [(s["id"], s["version"], s["operations"]) for s in listed] == [
        ("shipping", 1, ["create-shipment"])
    ]
    code, out, _ = cli(capsys, "--db", db_url, "services", "list")
    assert "shipping" in out and "create-shipment" in out

    code, out, _ = cli(capsys, "--db", db_url, "services", "show", "shipping", "--json")
    assert json.loads(out)["operations"]["create-shipment"]["path"] == "'/shipments/' + input['order']"
    code, out, _ = cli(capsys, "--db", db_url, "services", "show", "shipping", "--version", "1")
    assert "base_url: env['shipping_url']" in out

    code, _, err = cli(capsys, "--db", db_url, "services", "show", "nope")
    assert code == 1 and "ServiceNotFound: no service 'nope' is saved" in err


def test_a_database_error_before_the_call_uses_no_attempt(db_url: str) -> None:
    """The service lookup fails (its table is gone): the task comes back after its lease,
    the invoke does not take its error branch, and nothing is called."""
    from statem.schema import services as services_table
    from statem.testing import FakeClock

    clock = FakeClock()
    machine = shipper()
    machine["states"]["go"]["always"][0]["invoke"]["retry"] = {"max_attempts": 1}
    with http_server(lambda path, body, headers: (201, {"tracking": "T"})) as (base, calls):
        env = {"shipping_url": base, "token": "t"}
        first = Engine(db_url, env=env, clock=clock)
        try:
            first.save_service(service())
            first.save_machine(machine)
            ex = first.start("ship", {"order": "R1"})  # armed and pinned to shipping v1
        finally:
            first.close()
        engine = Engine(db_url, env=env, clock=clock)  # a fresh process: nothing cached
        try:
            with engine.db.begin() as conn:
                services_table.drop(conn)
            try:
                assert engine.run_once() == 1  # claimed; the lookup fails; not applied
                assert engine.get(ex.id).status == "running"
                assert [s.kind for s in engine.history(ex.id)] == ["start", "invoke"]
            finally:
                with engine.db.begin() as conn:
                    services_table.create(conn)
            engine.save_service(service())
            clock.advance(60)  # the claim's lease lapses; the task comes back
            run_until_idle(engine)
            done = engine.get(ex.id)
        finally:
            engine.close()
    assert (done.state, done.output) == ("done", "T")
    assert len(calls) == 1
