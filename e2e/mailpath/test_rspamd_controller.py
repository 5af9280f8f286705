"""Rspamd's controller as the rendered config sets it up: read-only endpoints (/metrics for
Prometheus, /ping for the kubelet) answer any client the NetworkPolicy lets through, privileged
commands answer nobody, loopback included.

A client outside the pod is played by a connection from 127.0.0.2: a different source address,
still on loopback."""

import http.client

import pytest

# `Ports::shifted`: the controller is at port-base + 1334.
CONTROLLER = 1334
OUTSIDE = "127.0.0.2"
INSIDE = "127.0.0.1"


def request(stack, method, path, source, headers=None):
    conn = http.client.HTTPConnection(
        "127.0.0.1", stack.port_base + CONTROLLER, source_address=(source, 0), timeout=20
    )
    try:
        body = b"From: a@example.net\r\n\r\nhello\r\n" if method == "POST" else None
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("source", [INSIDE, OUTSIDE])
def test_metrics_and_ping_answer_scrapers_outside_the_pod(stack, source):
    status, body = request(stack, "GET", "/metrics", source)
    assert status == 200, body
    assert "rspamd_scanned_total" in body or "rspamd_build_info" in body, body[:300]
    status, body = request(stack, "GET", "/ping", source)
    assert (status, body.strip()) == (200, "pong")


@pytest.mark.parametrize("source", [INSIDE, OUTSIDE])
@pytest.mark.parametrize(
    "method,path",
    [("POST", "/learnspam"), ("GET", "/statreset"), ("POST", "/saveactions")],
)
def test_privileged_commands_are_refused_to_everyone(stack, source, method, path):
    for headers in ({}, {"Password": "q2"}, {"Password": "$2$privilegedcommands$disabled"},
                    {"Password": "anything"}):
        status, body = request(stack, method, path, source, headers)
        assert status in (401, 403), (headers, status, body)
